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

``thresholding: flexmatch`` (FlexMatch, Zhang et al. 2021) replaces the one threshold by one per
class that follows how often the model is already confident about that class: with sigma_c the
number of unlabelled patches whose latest confident (>= tau) prediction was class c and u the number
never confidently predicted, beta_c = sigma_c / max(max_c sigma_c, u) and T_c = beta_c / (2 - beta_c)
tau. A class the model rarely predicts confidently (the lesions) gets a lower threshold; early on,
while most patches were never confident, every threshold is low (FlexMatch's warm-up).

Diagnostics, epoch means under ``fixmatch/``: ``mask_rate`` (share of unlabelled patches above the
threshold), ``pseudo_lesion_share`` (share of those pseudo-labelled as lesions), ``loss_sup``,
``loss_unsup``, ``p_model_lesion`` (the running mean p_model of the lesion class) and, with FlexMatch,
``threshold_lesion`` / ``threshold_healthy`` (the class thresholds). Where the unlabelled patches'
labels are known but hidden (synthetic data; the pixel-annotated and grade-0 photographs of a real
set), also how good the pseudo-labels are against them, from counts summed over the epoch (never used
by the loss): ``pseudo_accuracy`` (confident pseudo-labels that are right), ``pseudo_lesion_precision``
and ``pseudo_lesion_recall`` (of the lesion pseudo-labels; recall over every true lesion patch, so it
includes the threshold's misses) and ``true_lesion_share`` (the lesion share the pseudo-labels should
show).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import OptimizerCallable
from torch.optim.swa_utils import AveragedModel

from ..models import PatchBackbone, build_patch_model
from ..utils.errors import ConfigError
from .base import PatchTask, broadcast_from_rank0, warm_ema
from .fixmatch_losses import (
    fixmatch_unsup_loss,
    flexmatch_thresholds,
    pseudo_label_counts,
    pseudo_label_quality,
)


class FixMatchTask(PatchTask):
    """FixMatch on the patch datamodule (``unlabeled: true``, ``unlabeled_strong: true``).

    Args:
        backbone: a registered backbone (:mod:`retinalab.models.backbones`): ``convnet`` (paper 000's
            conv-large, as the ConvNet baseline and the SSL-GAN's D), ``resnet18/34/50`` (timm, from scratch)
            or ``module:name`` of a module registering one.
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
        thresholding: ``fixed`` (FixMatch: tau for every class) or ``flexmatch`` (class thresholds
            that follow how often each class is confidently predicted, for the minority lesion class).
        unsup_weight: lambda_u, the weight of the unlabelled loss (1).
        distribution_alignment: rescale the weak predictions by p_labelled / p_model (ReMixMatch)
            before the threshold, for the minority lesion class.
        alignment_momentum: momentum of p_model's running mean (with the same warm-up as the EMA).
        ema_decay: decay of the weight average used for evaluation (0.999).
        ema_warmup: cap the decay at (1 + t) / (10 + t) after t steps.
        input_range: patches arrive in [0, 1]; ``symmetric`` maps them to [-1, 1].
        data_init: Salimans' data-dependent initialisation of ``convnet`` on the first batch.
        pretrained_path: a local weights file for a backbone that takes them (the older spelling of ``weights``).
        weights: a backbone's pretrained weights, as in :class:`~retinalab.tasks.PatchClassifierTask`
            (``None``, the default: from scratch).
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
        thresholding: Literal["fixed", "flexmatch"] = "fixed",
        unsup_weight: float = 1.0,
        distribution_alignment: bool = False,
        alignment_momentum: float = 0.999,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        input_range: Literal["unit", "symmetric"] = "symmetric",
        data_init: bool = True,
        pretrained_path: str | None = None,
        weights: str | None = None,
        dropout_in: float = 0.2,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"threshold must lie in (0, 1], got {threshold!r}")
        if thresholding not in ("fixed", "flexmatch"):
            raise ConfigError(f"thresholding must be 'fixed' or 'flexmatch', got {thresholding!r}")
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer = optimizer
        self.model = build_patch_model(
            backbone,
            num_classes=num_classes,
            width=width,
            pretrained_path=pretrained_path,
            weights=weights,
            dropout_in=dropout_in,
            dropout=dropout,
        )
        self.ema = AveragedModel(self.model, multi_avg_fn=None, avg_fn=self._ema_avg, use_buffers=True)
        self.ema.requires_grad_(False)
        self.register_buffer("initialized", torch.tensor(not (data_init and hasattr(self.model, "data_init"))))
        self._batch_norm = any(isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for mod in self.model.modules())
        # distribution alignment: the labelled class shares (set at fit start) and the running mean of
        # the model's unlabelled predictions; both in checkpoints, so a resumed run aligns alike
        self.register_buffer("p_labelled", torch.full((num_classes,), 1.0 / num_classes))
        self.register_buffer("p_model", torch.full((num_classes,), 1.0 / num_classes))
        self.register_buffer("p_model_updates", torch.tensor(0, dtype=torch.long))
        # FlexMatch: per unlabelled patch, the class of its latest confident prediction (-1: none yet),
        # and where a cache row's patches start in it (-1: not unlabelled); sized in setup, saved in checkpoints
        self.register_buffer("flex_seen", torch.zeros(0, dtype=torch.int8))
        self.register_buffer("flex_offset", torch.zeros(0, dtype=torch.long))
        # the unlabelled patches' hidden labels (cache rows x patches, -1 unknown) for the pseudo-label
        # diagnostics only, and the epoch's counts; neither is saved
        self._hidden_labels: torch.Tensor | None = None
        self._pseudo_counts = torch.zeros(6)

    # ---------------------------------------------------------------- helpers
    def _ema_avg(self, avg: torch.Tensor, new: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        return warm_ema(avg, new, num_averaged, self.hparams.ema_decay, self.hparams.ema_warmup)

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
        if stage == "fit" and getattr(dm, "cache", None) is not None:
            labels = getattr(dm.cache, "labels", None)
            self._hidden_labels = torch.from_numpy(np.array(labels, dtype=np.int8)) if labels is not None else None
        if (
            self.hparams.thresholding == "flexmatch"
            and getattr(dm, "cache", None) is not None
            and "unlabeled" in getattr(dm, "rows", {})
        ):
            # before a checkpoint is restored (fit, test, ...), so that its FlexMatch state loads into
            # buffers of its size
            rows, g = dm.rows["unlabeled"], dm.cache.patches_per_image
            offset = torch.full((len(dm.cache),), -1, dtype=torch.long)
            offset[torch.as_tensor(rows, dtype=torch.long)] = torch.arange(len(rows)) * g
            if not torch.equal(self.flex_offset.cpu(), offset):
                self.flex_offset = offset.to(self.device)
                self.flex_seen = torch.full((len(rows) * g,), -1, dtype=torch.int8, device=self.device)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a checkpoint's FlexMatch record keeps its size where setup could not size it (e.g. predicting a folder)
        state = checkpoint.get("state_dict", {})
        for name in ("flex_seen", "flex_offset"):
            if name in state and state[name].shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(state[name], device=self.device))

    def class_thresholds(self) -> torch.Tensor | float:
        """The pseudo-label thresholds: tau, or FlexMatch's one per class."""
        if self.hparams.thresholding != "flexmatch":
            return self.hparams.threshold
        if self.flex_seen.numel() == 0:
            raise RuntimeError(
                "thresholding: flexmatch needs the patch datamodule's unlabelled pool (set up in FixMatchTask.setup)"
            )
        return flexmatch_thresholds(self.flex_seen, self.hparams.num_classes, self.hparams.threshold)

    @torch.no_grad()
    def _update_flex_seen(self, batch: dict[str, Any], logits_weak: torch.Tensor) -> None:
        """Record each unlabelled patch's prediction where it reached tau (FlexMatch's sigma counts)."""
        pos = self.flex_offset[batch["image_index"].long()] + batch["patch_index"].long()
        conf, pred = torch.softmax(logits_weak.detach().float(), dim=1).max(1)
        pred = torch.where(
            conf >= self.hparams.threshold, pred, torch.full_like(pred, -2)
        )  # -2: not confident, leave as is
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # every rank keeps the whole record
            pos, pred = self.all_gather(pos).flatten(), self.all_gather(pred).flatten()
        keep = (pred >= 0) & (pos >= 0)
        self.flex_seen[pos[keep]] = pred[keep].to(torch.int8)

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
            raise ConfigError("FixMatchTask needs labelled and unlabelled batches: set data.unlabeled: true")
        if "image_strong" not in batch["unlabeled"]:
            raise ConfigError(
                "FixMatchTask needs a weak and a strong view of every unlabelled patch: set data.unlabeled_strong: true"
            )
        x, y = batch["labeled"]["image"], batch["labeled"]["label"]
        u_w, u_s = batch["unlabeled"]["image"], batch["unlabeled"]["image_strong"]
        n, m = len(x), len(u_w)
        self._maybe_data_init(torch.cat([x, u_w]))
        if (
            self._batch_norm
        ):  # one pass over all three, so that batch norm normalises them together (as FixMatch's code)
            logits = self(torch.cat([x, u_w, u_s]))
            l_x, l_w, l_s = logits[:n], logits[n : n + m], logits[n + m :]
        else:  # no batch norm (conv-large): the same logits, without back-propagating through the weak views
            with torch.no_grad():
                l_w = self(u_w)
            logits = self(torch.cat([x, u_s]))
            l_x, l_s = logits[:n], logits[n:]
        loss_sup = F.cross_entropy(l_x, y)
        thresholds = self.class_thresholds()
        loss_unsup, mask, pseudo = fixmatch_unsup_loss(l_w, l_s, thresholds, self.alignment())
        if self.hparams.distribution_alignment:
            self._update_p_model(l_w)
        if self.hparams.thresholding == "flexmatch":
            self._update_flex_seen(batch["unlabeled"], l_w)
        loss = loss_sup + self.hparams.unsup_weight * loss_unsup
        with torch.no_grad():
            confident = mask.float().mean()
            lesion_share = (pseudo[mask] > 0).float().mean() if mask.any() else torch.zeros((), device=self.device)
            if self._hidden_labels is not None:  # on the step's device: no host sync per step
                if self._hidden_labels.device != pseudo.device:
                    self._hidden_labels = self._hidden_labels.to(pseudo.device)
                i, j = batch["unlabeled"]["image_index"].long(), batch["unlabeled"]["patch_index"].long()
                self._pseudo_counts = self._pseudo_counts.to(pseudo.device) + pseudo_label_counts(
                    pseudo, mask, self._hidden_labels[i, j]
                )
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/acc", (l_x.argmax(1) == y).float().mean(), batch_size=n)
        self.log_dict(
            {
                "fixmatch/loss_sup": loss_sup.detach(),
                "fixmatch/loss_unsup": loss_unsup.detach(),
                "fixmatch/mask_rate": confident,
                "fixmatch/pseudo_lesion_share": lesion_share,
                "fixmatch/p_model_lesion": self.p_model[1:].sum(),
            },
            on_step=False,
            on_epoch=True,
            batch_size=m,
        )
        if isinstance(thresholds, torch.Tensor):
            self.log_dict(
                {"fixmatch/threshold_healthy": thresholds[0], "fixmatch/threshold_lesion": thresholds[1:].min()},
                on_step=False,
                on_epoch=True,
                batch_size=m,
            )
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ema.update_parameters(self.model)

    def on_train_epoch_start(self) -> None:
        self._pseudo_counts = torch.zeros(6)

    def on_train_epoch_end(self) -> None:
        if self._hidden_labels is None:
            return
        counts = self._pseudo_counts.to(self.device)  # once per epoch
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # every rank's patches
            torch.distributed.all_reduce(counts)
        for name, value in pseudo_label_quality(counts.cpu()).items():
            self.log(f"fixmatch/{name}", value)

    def configure_optimizers(self):
        h = self.hparams
        if self.optimizer is not None:
            return self.optimizer(self.model.parameters())
        return torch.optim.Adam(self.model.parameters(), lr=h.lr, betas=(h.beta1, h.beta2), weight_decay=h.weight_decay)
