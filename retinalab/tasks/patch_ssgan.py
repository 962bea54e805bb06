"""Patch semi-supervised GAN (paper 000, section 2; Salimans et al. 2016 feature matching).

The discriminator D has K real-class logits l_1..l_K and a fake class whose logit is fixed at 0, so
p(fake | x) = 1 / (1 + sum_k exp(l_k)). With LSE(x) = logsumexp_k l_k(x):

    L_supervised   = cross-entropy of (l_1..l_K) on labelled patches
    L_unsupervised = -E_data log(1 - p_fake) - E_G log p_fake
                   = -E_data [LSE - softplus(LSE)] + E_G softplus(LSE)      (stable form)
    L_D            = L_supervised + L_unsupervised
    L_G            = || E_data h(x) - E_z h(G(z)) ||_1                       (feature matching)

with h the pooled features after D's NiN layers. Training follows Table 6: Adam 3e-4, beta1 0.5,
batches of labelled patches cycled alongside unlabelled ones, learning rate decayed linearly to 0
after epoch 1000 of 1200, and an exponential moving average (0.999) of D's parameters used for
validation, test and prediction.

Diagnostics, logged once per epoch (means over the epoch's steps) under ``gan/``: the three loss
terms (``gan/loss_sup``, ``gan/loss_unsup``, ``gan/loss_g``), the mean of p(fake) on unlabelled real
patches and on generated ones (``gan/p_fake_real``, ``gan/p_fake_generated``), and D's accuracy at
telling the two apart (``gan/d_accuracy``: real counted right when p(fake) < 0.5, generated when
p(fake) > 0.5, the two halves averaged). At each epoch's end, 64 generated patches (always from the
same noise) beside 64 real unlabelled ones (``gan/samples``: a W&B image, or
``<log_dir>/overlays/gan_samples_epochNNNN.png`` without W&B).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pytorch_lightning.cli import OptimizerCallable
from torch.optim.swa_utils import AveragedModel

from ..models import ConvLarge
from ..models.generator import PatchGenerator
from ..utils.errors import ConfigError
from ..viz import log_overlays
from .base import PatchTask, broadcast_from_rank0, warm_ema
from .ssgan_losses import feature_matching_loss, supervised_loss, unsupervised_loss

__all__ = ["PatchSSGANTask", "feature_matching_loss", "supervised_loss", "unsupervised_loss"]


class PatchSSGANTask(PatchTask):
    """Semi-supervised feature-matching GAN on fundus patches.

    Needs the patch datamodule with ``unlabeled: true`` (batches ``{"labeled": ..., "unlabeled": ...}``).
    Under DDP ``--trainer.strategy ddp`` runs as ``ddp_find_unused_parameters_true``: the discriminator and
    generator steps each update one network, which DDP's default reducer rejects.

    Args:
        width: channel multiplier of the conv-large discriminator (1.0 = Table 3).
        gen_width: channel multiplier of the generator (1.0 = Table 4).
        patch_size: side of the patches (the generator's output size).
        latent_dim: dimension of the uniform noise (Table 4: 100).
        num_classes: K real classes (2: healthy / diseased).
        lr_d: discriminator Adam learning rate (Table 6: 3e-4).
        lr_g: generator Adam learning rate (Table 6: 3e-4).
        beta1: Adam beta1 (Table 6: 0.5).
        beta2: Adam beta2.
        lr_decay_start: epoch after which both learning rates decay linearly to 0 at ``max_epochs``
            (Table 6: 1000 of 1200).
        ema_decay: decay of the discriminator's parameter average (Table 6: 0.999).
        ema_warmup: use decay min(ema_decay, (1 + t) / (10 + t)) at step t, so short runs are not
            evaluated with an average dominated by the initial weights.
        unsup_weight: weight of L_unsupervised in L_D (1 in the paper).
        data_init: Salimans' data-dependent initialisation of D on the first batch.
        optimizer_d: any optimiser for D from the config (``class_path: torch.optim.SGD`` ...);
            ``None`` = Adam(lr_d, (beta1, beta2)) as in Table 6.
        optimizer_g: the same for G (``None`` = Adam(lr_g, (beta1, beta2))).
        dropout_in: D's dropout on the input pixels (Table 3: 0.2).
        dropout: D's dropout between its conv blocks (Table 3: 0.5).
        g_steps: generator updates per discriminator update (1, as in Salimans et al.'s code): a remedy to
            try when D wins the game ever more clearly as training goes on.
        instance_noise: standard deviation of Gaussian noise added to the real unlabelled and the generated
            patches D sees in the GAN game (in [-1, 1] pixel units; labelled patches stay clean), decayed
            linearly to 0 over ``instance_noise_epochs``: instance noise (Sonderby et al. 2017, "Amortised
            MAP inference for image super-resolution"; Arjovsky & Bottou 2017, "Towards principled methods
            for training generative adversarial networks") makes the real and generated distributions
            overlap, so D cannot separate them perfectly. 0 (default): none.
        instance_noise_epochs: epochs over which the noise decays to 0 (``None``: the whole run, ``max_epochs``).
    """

    #: each optimiser step updates one network, so DDP must allow unused parameters: ``--trainer.strategy ddp``
    #: runs as ``ddp_find_unused_parameters_true`` (retinalab.lightning.cli)
    ddp_unused_parameters = True

    def __init__(
        self,
        width: float = 1.0,
        gen_width: float = 1.0,
        patch_size: int = 32,
        latent_dim: int = 100,
        num_classes: int = 2,
        lr_d: float = 3e-4,
        lr_g: float = 3e-4,
        beta1: float = 0.5,
        beta2: float = 0.999,
        lr_decay_start: int = 1000,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        unsup_weight: float = 1.0,
        data_init: bool = True,
        optimizer_d: OptimizerCallable | None = None,
        optimizer_g: OptimizerCallable | None = None,
        dropout_in: float = 0.2,
        dropout: float = 0.5,
        g_steps: int = 1,
        instance_noise: float = 0.0,
        instance_noise_epochs: int | None = None,
    ) -> None:
        if g_steps < 1:
            raise ConfigError(f"g_steps must be >= 1, got {g_steps}")
        if instance_noise < 0:
            raise ConfigError(f"instance_noise must be >= 0, got {instance_noise}")
        super().__init__()
        # the optimiser factories are recorded in the run's config.yaml, not in the checkpoint
        self.save_hyperparameters(ignore=["optimizer_d", "optimizer_g"])
        self.optimizer_d, self.optimizer_g = optimizer_d, optimizer_g
        self.automatic_optimization = False
        self.discriminator = ConvLarge(num_classes=num_classes, width=width, dropout_in=dropout_in, dropout=dropout)
        self.generator = PatchGenerator(patch_size, latent_dim, width=gen_width)
        self.ema = AveragedModel(self.discriminator, multi_avg_fn=None, avg_fn=self._ema_avg, use_buffers=False)
        self.ema.requires_grad_(False)  # updated by averaging, never by gradients
        self.register_buffer("initialized", torch.tensor(not data_init))
        self._last_real: torch.Tensor | None = None  # the latest unlabelled patches, for the sample picture

    # ---------------------------------------------------------------- helpers
    def _ema_avg(self, avg: torch.Tensor, new: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        return warm_ema(avg, new, num_averaged, self.hparams.ema_decay, self.hparams.ema_warmup)

    @staticmethod
    def _prepare(x: torch.Tensor) -> torch.Tensor:
        return x * 2 - 1  # the generator's tanh range

    def eval_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the EMA discriminator (paper 000 appendix A: the average is used for inference)."""
        return self.ema.module(self._prepare(x))

    def _maybe_data_init(self, x: torch.Tensor) -> None:
        if bool(self.initialized):
            return
        self.discriminator.data_init(x)
        broadcast_from_rank0(self.discriminator)
        # the average starts from the initialised weights
        for p_avg, p in zip(self.ema.module.parameters(), self.discriminator.parameters(), strict=True):
            p_avg.data.copy_(p.data)
        self.initialized.fill_(True)

    # ---------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if "labeled" not in batch or "unlabeled" not in batch:
            raise ConfigError("PatchSSGANTask needs labelled and unlabelled batches: set data.unlabeled: true")
        opt_d, opt_g = self.optimizers()
        x_l = self._prepare(batch["labeled"]["image"])
        y = batch["labeled"]["label"]
        x_u = self._prepare(batch["unlabeled"]["image"])
        n_l, n_u = len(x_l), len(x_u)
        self._maybe_data_init(torch.cat([x_l, x_u]))

        # discriminator: one pass over labelled, unlabelled and generated patches (the weight-normed
        # weights are recomputed once, not three times)
        with torch.no_grad():
            x_g = self.generator(self.generator.sample_noise(n_u, self.device))
        sigma = self.noise_sigma()
        logits = self.discriminator(torch.cat([x_l, self._noisy(x_u, sigma), self._noisy(x_g, sigma)]))
        l_lab, l_unl, l_fake = logits[:n_l], logits[n_l : n_l + n_u], logits[n_l + n_u :]
        loss_sup = supervised_loss(l_lab, y)
        loss_unsup = unsupervised_loss(l_unl, l_fake)
        loss_d = loss_sup + self.hparams.unsup_weight * loss_unsup
        # toggling freezes the other optimiser's parameters, so each backward only reaches the
        # network it updates (required for DDP's gradient reducer, and saves work)
        self.toggle_optimizer(opt_d)
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        opt_d.step()
        self.untoggle_optimizer(opt_d)
        self.ema.update_parameters(self.discriminator)

        # generator: feature matching against the unlabelled batch (g_steps times)
        self.toggle_optimizer(opt_g)
        for _ in range(self.hparams.g_steps):
            x_g = self.generator(self.generator.sample_noise(n_u, self.device))
            h = self.discriminator.features(torch.cat([self._noisy(x_u, sigma), self._noisy(x_g, sigma)]))
            loss_g = feature_matching_loss(h[:n_u].detach(), h[n_u:])
            opt_g.zero_grad()
            self.manual_backward(loss_g)
            opt_g.step()
        self.untoggle_optimizer(opt_g)

        acc = (l_lab.argmax(1) == y).float().mean()
        self._log_diagnostics(loss_sup, loss_unsup, loss_g, l_unl, l_fake)
        real = batch["unlabeled"]["image"]
        if (
            self._last_real is None or len(real) >= self.num_samples
        ):  # a full picture: an epoch's last batch can be short
            self._last_real = real[: self.num_samples].detach()
        self.log_dict(
            {
                "train/loss_d": loss_d,
                "train/loss_sup": loss_sup,
                "train/loss_unsup": loss_unsup,
                "train/loss_g": loss_g,
                "train/acc": acc,
            },
            prog_bar=False,
            batch_size=n_l,
        )
        self.log("train/loss", loss_d, prog_bar=True, batch_size=n_l)

    def noise_sigma(self) -> float:
        """The instance noise's standard deviation now: ``instance_noise`` decayed linearly to 0 over
        ``instance_noise_epochs`` (0 when there is none)."""
        sigma0 = float(self.hparams.instance_noise)
        if sigma0 == 0 or self._trainer is None:
            return sigma0
        epochs = self.hparams.instance_noise_epochs or self.trainer.max_epochs or 1
        per_epoch = self.trainer.num_training_batches
        finished = self.trainer.fit_loop.epoch_loop.batch_progress.current.completed  # batches of this epoch done
        done = self.current_epoch + (finished / per_epoch if 0 < per_epoch < float("inf") else 0.0)
        return sigma0 * max(0.0, 1.0 - done / epochs)

    @staticmethod
    def _noisy(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return x if sigma == 0 else x + sigma * torch.randn_like(x)

    # ---------------------------------------------------------------- diagnostics
    #: generated and real patches in the sample picture (8 x 8 each)
    num_samples: int = 64

    @staticmethod
    def p_fake(logits: torch.Tensor) -> torch.Tensor:
        """p(fake | x) = 1 / (1 + sum_k exp(l_k)) = sigmoid(-LSE), from the K real-class logits."""
        return torch.sigmoid(-torch.logsumexp(logits, dim=1))

    def _log_diagnostics(
        self,
        loss_sup: torch.Tensor,
        loss_unsup: torch.Tensor,
        loss_g: torch.Tensor,
        l_unl: torch.Tensor,
        l_fake: torch.Tensor,
    ) -> None:
        """What the GAN game is doing, as epoch means (see the module docstring)."""
        with torch.no_grad():
            p_real, p_gen = self.p_fake(l_unl.float()), self.p_fake(l_fake.float())
            d_acc = 0.5 * ((p_real < 0.5).float().mean() + (p_gen > 0.5).float().mean())
        values = {
            "gan/loss_sup": loss_sup.detach(),
            "gan/loss_unsup": loss_unsup.detach(),
            "gan/loss_g": loss_g.detach(),
            "gan/p_fake_real": p_real.mean(),
            "gan/p_fake_generated": p_gen.mean(),
            "gan/d_accuracy": d_acc,
        }
        self.log_dict(values, on_step=False, on_epoch=True, batch_size=len(l_unl))

    @torch.no_grad()
    def sample_picture(self, real: torch.Tensor | None = None, seed: int = 0) -> np.ndarray:
        """64 generated patches (noise from a generator of its own, seeded with ``seed``: the same
        patches' evolution across epochs, and the global random state untouched) in an 8 x 8 grid,
        beside up to 64 ``real`` patches (``B x 3 x s x s`` in [0, 1]), as an RGB uint8 image.

        G runs in training mode, as D sees it during training (batch statistics); its batch-norm
        running statistics are put back afterwards, so the picture changes no state of the run.
        """
        from torchvision.utils import make_grid

        g = self.generator
        saved = {k: v.clone() for k, v in g.named_buffers()}
        was_training = g.training
        g.train()
        z = torch.rand(self.num_samples, g.latent_dim, generator=torch.Generator().manual_seed(seed)).to(self.device)
        fake = (g(z).float() + 1) / 2
        g.train(was_training)
        for k, v in g.named_buffers():
            v.copy_(saved[k])
        tiles = [make_grid(fake.clamp(0, 1).cpu(), nrow=8, padding=2, pad_value=1.0)]
        if real is not None and len(real):
            tiles.append(
                make_grid(real[: self.num_samples].float().clamp(0, 1).cpu(), nrow=8, padding=2, pad_value=1.0)
            )
        h = max(t.shape[1] for t in tiles)
        tiles = [torch.nn.functional.pad(t, (0, 0, 0, h - t.shape[1]), value=1.0) for t in tiles]
        gap = torch.ones(3, h, 8)
        picture = torch.cat([tiles[0], gap, tiles[1]], dim=2) if len(tiles) == 2 else tiles[0]
        # nearest-neighbour x2: 32 px patches are small on a screen
        picture = picture.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
        return (picture.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)

    def on_train_epoch_end(self) -> None:
        if self._trainer is not None and not self.trainer.sanity_checking:
            log_overlays(
                self,
                "gan/samples",
                [
                    (
                        f"generated (left) | real unlabelled (right), epoch {self.current_epoch}",
                        self.sample_picture(self._last_real),
                    )
                ],
                png_name="gan_samples",
            )
        schedulers = self.lr_schedulers()
        for sch in schedulers if isinstance(schedulers, list) else [schedulers]:
            if sch is not None:
                sch.step()

    def configure_optimizers(self):
        h = self.hparams
        d_params, g_params = self.discriminator.parameters(), self.generator.parameters()
        opt_d = (
            self.optimizer_d(d_params)
            if self.optimizer_d
            else torch.optim.Adam(d_params, lr=h.lr_d, betas=(h.beta1, h.beta2))
        )
        opt_g = (
            self.optimizer_g(g_params)
            if self.optimizer_g
            else torch.optim.Adam(g_params, lr=h.lr_g, betas=(h.beta1, h.beta2))
        )
        max_epochs = (
            self.trainer.max_epochs if self._trainer is not None and self.trainer.max_epochs else h.lr_decay_start
        )

        def factor(epoch: int) -> float:
            """1 until ``lr_decay_start``, then linearly to 0 at ``max_epochs``."""
            if epoch < h.lr_decay_start or max_epochs <= h.lr_decay_start:
                return 1.0
            return max(0.0, (max_epochs - epoch) / (max_epochs - h.lr_decay_start))

        sch = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in (opt_d, opt_g)]
        return [opt_d, opt_g], sch
