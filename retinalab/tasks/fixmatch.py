"""FixMatch on fundus patches (Sohn et al. 2020): the reference point of semi-supervised learning, as a
control beside paper 000's SSL-GAN, on the same patches, backbones and image-level scores.

For a labelled batch (x, y) and an unlabelled batch seen twice, weakly (u_w: the labelled patches'
flips and small shifts) and strongly (u_s: flips and shifts, two RandAugment-like operations at random
magnitudes, Cutout), with one forward pass of the classifier f over all three:

    L_s = CE(f(x), y)
    q   = softmax(f(u_w)), detached (optionally aligned to the labelled class prior, below)
    L_u = mean over the unlabelled batch of 1[max q >= tau] * CE(f(u_s), argmax q)
    L   = L_s + lambda_u * L_u

with tau = ``threshold`` (0.95), lambda_u = ``unsup_weight`` (1) and the unlabelled batch ``mu`` times
the labelled one (``data.unlabeled_ratio``; 7 in the paper). The mean runs over the whole unlabelled
batch, not over the confident patches only (FixMatch's Eq. 4). Evaluation, tests and predictions use
an exponential moving average of the weights (0.999), as the paper does.

Lesion patches are a minority. With a fixed 0.95 threshold the confident predictions early in training
are mostly "healthy", and pseudo-labels feed that back. ``distribution_alignment`` (ReMixMatch,
Berthelot et al. 2020) rescales each prediction q by p_labelled / p_model before the threshold, where
p_labelled is the class share of the labelled patches and p_model a running mean of the model's
predictions on unlabelled patches, and renormalises: a model that predicts lesions less often than
the labels say gets its lesion probabilities raised.

Diagnostics, epoch means under ``fixmatch/``: ``mask_rate`` (share of unlabelled patches above the
threshold), ``pseudo_lesion_share`` (share of those pseudo-labelled as lesions), ``loss_sup``,
``loss_unsup``, and ``p_model_lesion`` (the running mean p_model of the lesion class).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pytorch_lightning.cli import OptimizerCallable
from torch.optim.swa_utils import AveragedModel

from ..models import PatchBackbone, build_patch_model
from .base import PatchTask, broadcast_from_rank0, warm_ema


def fixmatch_unsup_loss(logits_weak: torch.Tensor, logits_strong: torch.Tensor, threshold: float,
                        align: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FixMatch's unlabelled loss (Eq. 4 of Sohn et al. 2020).

    Args:
        logits_weak: ``B x K`` logits of the weak views (detached inside).
        logits_strong: ``B x K`` logits of the strong views of the same patches.
        threshold: tau, the confidence above which a weak prediction becomes a pseudo-label.
        align: ``K`` factors p_labelled / p_model multiplying the weak probabilities before they are
            renormalised (distribution alignment), or ``None``.

    Returns:
        the loss (mean over all ``B`` patches, unconfident ones counting 0), the ``B`` mask of
        confident patches and their ``B`` pseudo-labels.
    """
    with torch.no_grad():
        q = torch.softmax(logits_weak.detach().float(), dim=1)
        if align is not None:
            q = q * align
            q = q / q.sum(1, keepdim=True)
        conf, pseudo = q.max(1)
        mask = conf >= threshold
    loss = (F.cross_entropy(logits_strong, pseudo, reduction="none") * mask).mean()
    return loss, mask, pseudo


class FixMatchTask(PatchTask):
    """FixMatch on the patch datamodule (``unlabeled: true``, ``unlabeled_strong: true``).

    Args:
        backbone: ``convnet`` (paper 000's conv-large, as the ConvNet baseline and the SSL-GAN's D) or
            ``resnet18/34/50`` (timm, from scratch).
        width: channel multiplier of ``convnet``.
        num_classes: K (2: healthy / diseased).
        lr: Adam learning rate (the ConvNet's, Table 6 of paper 000: 3e-4).
        beta1: Adam beta1 (0.5 as the ConvNet).
        beta2: Adam beta2.
        weight_decay: Adam weight decay.
        optimizer: any optimiser from the config (FixMatch's SGD: ``class_path: torch.optim.SGD``,
            ``lr: 0.03``, ``momentum: 0.9``, ``nesterov: true``, ``weight_decay: 5e-4``); ``None``: Adam
            as above, so that FixMatch differs from the ConvNet only in what it adds.
        threshold: tau, the pseudo-label confidence threshold (0.95).
        unsup_weight: lambda_u, the weight of the unlabelled loss (1).
        distribution_alignment: rescale the weak predictions by p_labelled / p_model (ReMixMatch)
            before the threshold, for the minority lesion class.
        alignment_momentum: momentum of p_model's running mean (with the same warm-up as the EMA).
        ema_decay: decay of the weight average used for evaluation (0.999).
        ema_warmup: cap the decay at (1 + t) / (10 + t) after t steps.
        input_range: patches arrive in [0, 1]; ``symmetric`` maps them to [-1, 1].
        data_init: Salimans' data-dependent initialisation of ``convnet`` on the first batch.
        pretrained_path: local weight file for a ResNet backbone; ``None`` trains from scratch.
        dropout_in: ``convnet``'s input dropout (Table 3: 0.2).
        dropout: ``convnet``'s inner dropout (Table 3: 0.5).
    """

    def __init__(
        self,
        backbone: PatchBackbone = "convnet",
        width: float = 1.0,
        num_classes: int = 2,
        lr: float = 3e-4,
        beta1: float = 0.5,
        beta2: float = 0.999,
        weight_decay: float = 0.0,
        optimizer: OptimizerCallable | None = None,
        threshold: float = 0.95,
        unsup_weight: float = 1.0,
        distribution_alignment: bool = False,
        alignment_momentum: float = 0.999,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        input_range: Literal["unit", "symmetric"] = "symmetric",
        data_init: bool = True,
        pretrained_path: str | None = None,
        dropout_in: float = 0.2,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must lie in (0, 1], got {threshold!r}")
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer = optimizer
        extra = {"dropout_in": dropout_in, "dropout": dropout} if backbone == "convnet" else {}
        self.model = build_patch_model(backbone, num_classes=num_classes, width=width, pretrained_path=pretrained_path, **extra)
        self.ema = AveragedModel(self.model, multi_avg_fn=None, avg_fn=self._ema_avg, use_buffers=True)
        self.ema.requires_grad_(False)
        self.register_buffer("initialized", torch.tensor(not (data_init and hasattr(self.model, "data_init"))))
        # distribution alignment: the labelled class shares (set at fit start) and the running mean of
        # the model's unlabelled predictions; both in checkpoints, so a resumed run aligns alike
        self.register_buffer("p_labelled", torch.full((num_classes,), 1.0 / num_classes))
        self.register_buffer("p_model", torch.full((num_classes,), 1.0 / num_classes))
        self.register_buffer("p_model_updates", torch.tensor(0, dtype=torch.long))

    # ---------------------------------------------------------------- helpers
    def _ema_avg(self, avg: torch.Tensor, new: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        return warm_ema(avg, new, num_averaged, self.hparams.ema_decay, self.hparams.ema_warmup)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 - 1 if self.hparams.input_range == "symmetric" else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self._prepare(x))

    def eval_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the weight average (FixMatch evaluates its EMA model)."""
        return self.ema.module(self._prepare(x))

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit" and hasattr(dm, "class_counts") and int(self.p_model_updates) == 0:
            counts = torch.as_tensor(dm.class_counts(), dtype=torch.float32).clamp_min(1)
            if len(counts) == self.hparams.num_classes:
                self.p_labelled.copy_(counts / counts.sum())

    def _maybe_data_init(self, x: torch.Tensor) -> None:
        if bool(self.initialized):
            return
        self.model.data_init(self._prepare(x))
        broadcast_from_rank0(self.model)
        for p_avg, p in zip(self.ema.module.parameters(), self.model.parameters(), strict=True):
            p_avg.data.copy_(p.data)
        self.initialized.fill_(True)

    def alignment(self) -> torch.Tensor | None:
        """p_labelled / p_model, the factors distribution alignment multiplies predictions by."""
        return self.p_labelled / self.p_model.clamp_min(1e-6) if self.hparams.distribution_alignment else None

    @torch.no_grad()
    def _update_p_model(self, logits_weak: torch.Tensor) -> None:
        mean = torch.softmax(logits_weak.detach().float(), dim=1).mean(0)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(mean)
            mean /= torch.distributed.get_world_size()
        t = float(self.p_model_updates)
        m = min(self.hparams.alignment_momentum, (1 + t) / (10 + t))
        self.p_model.mul_(m).add_((1 - m) * mean)
        self.p_model_updates += 1

    # ---------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if "labeled" not in batch or "unlabeled" not in batch:
            raise ValueError("FixMatchTask needs labelled and unlabelled batches: set data.unlabeled: true")
        if "image_strong" not in batch["unlabeled"]:
            raise ValueError("FixMatchTask needs a weak and a strong view of every unlabelled patch: set data.unlabeled_strong: true")
        x, y = batch["labeled"]["image"], batch["labeled"]["label"]
        u_w, u_s = batch["unlabeled"]["image"], batch["unlabeled"]["image_strong"]
        n, m = len(x), len(u_w)
        self._maybe_data_init(torch.cat([x, u_w]))
        # one pass over all three, so batch-norm backbones normalise them together
        logits = self(torch.cat([x, u_w, u_s]))
        l_x, l_w, l_s = logits[:n], logits[n : n + m], logits[n + m :]
        loss_sup = F.cross_entropy(l_x, y)
        loss_unsup, mask, pseudo = fixmatch_unsup_loss(l_w, l_s, self.hparams.threshold, self.alignment())
        if self.hparams.distribution_alignment:
            self._update_p_model(l_w)
        loss = loss_sup + self.hparams.unsup_weight * loss_unsup
        with torch.no_grad():
            confident = mask.float().mean()
            lesion_share = (pseudo[mask] > 0).float().mean() if mask.any() else torch.zeros((), device=self.device)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/acc", (l_x.argmax(1) == y).float().mean(), batch_size=n)
        self.log_dict({"fixmatch/loss_sup": loss_sup.detach(), "fixmatch/loss_unsup": loss_unsup.detach(), "fixmatch/mask_rate": confident,
                       "fixmatch/pseudo_lesion_share": lesion_share, "fixmatch/p_model_lesion": self.p_model[1:].sum()},
                      on_step=False, on_epoch=True, batch_size=m)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ema.update_parameters(self.model)

    def configure_optimizers(self):
        h = self.hparams
        if self.optimizer is not None:
            return self.optimizer(self.model.parameters())
        return torch.optim.Adam(self.model.parameters(), lr=h.lr, betas=(h.beta1, h.beta2), weight_decay=h.weight_decay)
