"""Supervised patch classifier with image-level aggregation (paper 000's ConvNet/ResNet baselines).

Trained on the labelled patches only; evaluated with patch-level AUROC and image-level AUROC where
score_i = sum_j sigmoid(l_ij) (paper 000, section 2) and l_ij = logit(diseased) - logit(healthy).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..models import PatchBackbone, build_patch_model
from .base import PatchTask, broadcast_from_rank0


class PatchClassifierTask(PatchTask):
    """Supervised patch classification.

    Args:
        backbone: a registered backbone (:mod:`retinalab.models.backbones`): ``convnet`` (paper 000 Table 3) or
            ``resnet18/34/50`` (timm, from scratch), or ``module:name`` of a module registering one.
        width: channel multiplier of ``convnet`` (1.0 = paper).
        num_classes: K (2: healthy / diseased).
        lr: Adam learning rate.
        beta1: Adam beta1.
        beta2: Adam beta2.
        weight_decay: Adam weight decay.
        class_weight: ``balanced`` weights the loss by inverse patch-class frequency of the
            labelled set (paper 000 Table 5 for ResNet34), ``none`` otherwise.
        input_range: patches arrive in [0, 1]; ``symmetric`` maps them to [-1, 1] (the GAN's range).
        data_init: Salimans' data-dependent initialisation of ``convnet`` on the first training
            batch (rank 0's batch, broadcast to every rank under DDP).
        lr_plateau_patience: multiply the learning rate by ``lr_plateau_factor`` when ``val/loss`` has
            not improved for this many epochs (Table 5: 10 for ResNet34); ``None``: constant rate.
        lr_plateau_factor: the factor (Table 5: 0.1).
        pretrained_path: local weight file for a ResNet backbone (the older spelling of a local file
            in ``weights``).
        weights: a ResNet backbone's pretrained weights: ``imagenet`` (timm's default tag, from the
            Hugging Face hub and its cache), ``hf-hub:<org>/<name>`` or a local file
            (:mod:`retinalab.weights`); ``None`` (default) trains from scratch. With weights the
            patches reach the network in [0, 1] (``input_range`` is not applied) and are normalised
            with the weights' mean and std inside it.
        dropout_in: ``convnet``'s dropout on the input pixels (Table 3: 0.2).
        dropout: ``convnet``'s dropout between its conv blocks (Table 3: 0.5).
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
        class_weight: Literal["none", "balanced"] = "none",
        input_range: Literal["unit", "symmetric"] = "symmetric",
        data_init: bool = True,
        lr_plateau_patience: int | None = None,
        lr_plateau_factor: float = 0.1,
        pretrained_path: str | None = None,
        weights: str | None = None,
        dropout_in: float = 0.2,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_patch_model(
            backbone,
            num_classes=num_classes,
            width=width,
            pretrained_path=pretrained_path,
            weights=weights,
            dropout_in=dropout_in,
            dropout=dropout,
        )
        self.register_buffer("loss_weight", torch.ones(num_classes), persistent=False)
        # saved in checkpoints, so a resumed run does not initialise again
        self.register_buffer("initialized", torch.tensor(not (data_init and hasattr(self.model, "data_init"))))

    # ---------------------------------------------------------------- helpers
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit" and self.hparams.class_weight == "balanced" and hasattr(dm, "class_counts"):
            counts = torch.as_tensor(dm.class_counts(), dtype=torch.float32).clamp_min(1)
            self.loss_weight = (counts.sum() / (len(counts) * counts)).to(self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self._prepare(x))

    def _maybe_data_init(self, x: torch.Tensor) -> None:
        if bool(self.initialized):
            return
        self.model.data_init(self._prepare(x))
        broadcast_from_rank0(self.model)
        self.initialized.fill_(True)

    def eval_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    # ---------------------------------------------------------------- steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if "labeled" in batch:  # a semi-supervised loader: the baseline uses labelled data only
            batch = batch["labeled"]
        self._maybe_data_init(batch["image"])
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["label"], weight=self.loss_weight)
        acc = (logits.argmax(1) == batch["label"]).float().mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        self.log("train/acc", acc, batch_size=len(logits))
        return loss

    def configure_optimizers(self):
        h = self.hparams
        opt = torch.optim.Adam(self.parameters(), lr=h.lr, betas=(h.beta1, h.beta2), weight_decay=h.weight_decay)
        if h.lr_plateau_patience is None:
            return opt
        sch = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=h.lr_plateau_factor, patience=h.lr_plateau_patience
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sch, "monitor": "val/loss", "interval": "epoch"}}
