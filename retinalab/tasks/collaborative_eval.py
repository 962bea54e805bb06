"""Paper 001's evaluation, prediction and pictures: the validation/test steps of
:class:`retinalab.tasks.collaborative.CollaborativeTask` (per-lesion pixel metrics on pixel-annotated
photographs; kappa, accuracy and referable AUC on graded ones; on synthetic data the pseudo-mask
quality against the drawn masks) and the lesion maps ``retinalab predict`` writes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..viz import lesion_overlay, log_overlays
from .pseudo_quality import batch_truth, quality_maps, quality_sheet


class CollaborativeEvaluation:
    """The evaluation half of ``CollaborativeTask`` (a mixin: it uses the task's networks, metrics
    and ``hparams``)."""

    def _eval_step(self, batch: dict[str, Any] | None, split: str, dataloader_idx: int) -> None:
        if batch is None:
            return
        x = batch["image"]
        if "mask" in batch and self.stage != "grading":
            probs = self.masks(x)
            # soft targets (each pixel's lesion share) where the datamodule gives them: the lesion area as annotated
            self.pixel_metrics[split].update(probs, batch.get("mask_fraction", batch["mask"]), batch.get("mask_known"))
            self._keep_overlays(batch, probs, "masks")
            return
        if "mask" in batch:  # the grading stage has no pixel loader; a pixel batch here has no grades
            return
        truth = batch_truth(batch) if self.stage == "joint" else None
        masks = self.masks(x) if self.use_attention or truth is not None else None
        out = self.grade(x, masks)
        probs = torch.softmax(out["logits"].float(), 1)
        y = batch["label"]
        self.grade_metrics[split].update(probs, y)
        if self._binary_protocol:
            self.binary_metrics[split].update(probs, y)
        if "alpha" in out:
            self._keep_overlays(batch, self.grader.pseudo_masks(out["alpha"], x.shape[-2:]), "attention")
        if truth is not None:  # synthetic data: how good each map is as a lesion mask on these photographs
            maps = quality_maps(self, batch, masks, out)
            self.pseudo_quality[split].update(maps, truth)
            for i in range(len(x)):
                if len(self._quality_sheets) >= self.hparams.num_overlays or self.trainer.sanity_checking:
                    break
                self._quality_sheets.append(
                    (
                        f"{batch['image_id'][i]}: photograph | truth | " + " | ".join(maps),
                        quality_sheet(x[i], truth[i], {k: v[i] for k, v in maps.items()}, self.lesions),
                    )
                )

    def _keep_overlays(self, batch: dict[str, Any], maps: torch.Tensor, kind: str) -> None:
        if self.trainer.sanity_checking:
            return
        for i in range(len(maps)):
            if sum(1 for c, _ in self._overlays if c.endswith(kind)) >= self.hparams.num_overlays:
                return
            image = (batch["image"][i].permute(1, 2, 0).clamp(0, 1) * 255).byte().cpu().numpy()
            sheet = np.concatenate([image, lesion_overlay(image, maps[i].float().cpu().numpy(), self.lesions)], axis=1)
            self._overlays.append((f"{batch['image_id'][i]} {kind}", sheet))

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val", dataloader_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test", dataloader_idx)

    @torch.no_grad()
    def predict_step(self, batch: dict[str, Any] | None, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Lesion masks, attention maps (joint stage) and grade probabilities (grading stages) of a batch,
        on the CPU, for :class:`retinalab.lightning.LesionMapWriter`."""
        if batch is None:
            return {"image_id": [], "image": torch.zeros(0), "masks": torch.zeros(0)}
        x = batch["image"]
        masks = self.masks(x)
        out: dict[str, Any] = {
            "image_id": list(batch["image_id"]),
            "image": x.float().cpu(),
            "masks": masks.float().cpu(),
            "alpha": None,
            "grade_probs": None,
        }
        if self.stage != "segmentation":
            g = self.grade(x, masks)
            out["grade_probs"] = torch.softmax(g["logits"].float(), 1).cpu()
            if "alpha" in g:
                out["alpha"] = self.grader.pseudo_masks(g["alpha"], x.shape[-2:]).float().cpu()
        return out

    def _eval_end(self, split: str) -> None:
        pixel = self.pixel_metrics[split].compute()
        logs = {f"{split}/{k}": v for k, v in pixel.items()}
        if self.grade_metrics[split]["acc"].update_count:
            logs |= {f"{split}/{k}": v for k, v in self.grade_metrics[split].compute().items()}
            if self._binary_protocol:
                logs |= {f"{split}/{k}": v for k, v in self.binary_metrics[split].compute().items()}
        if self.pseudo_quality[split].updated:
            logs |= {f"{split}/vs_truth/{k}": v for k, v in self.pseudo_quality[split].compute().items()}
        if logs:
            self.log_dict(logs, add_dataloader_idx=False, sync_dist=False)
        self.pseudo_quality[split].reset()
        log_overlays(self, f"{split}/pseudo_masks", self._quality_sheets)
        self._quality_sheets = []
        self.pixel_metrics[split].reset()
        self.grade_metrics[split].reset()
        self.binary_metrics[split].reset()
        log_overlays(self, f"{split}/lesion_maps", self._overlays)
        self._overlays = []

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")
