"""Evaluation shared by the patch methods (paper 000, sections 2 and 4).

Patch-level AUROC; image-level AUROC of score_i = sum_j sigmoid(l_ij); a decision threshold on the
image score chosen on the validation set (Youden's J: max sensitivity + specificity - 1) and the
sensitivity and specificity at that threshold, for validation and test.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torchmetrics.classification import BinaryAUROC
from torchmetrics.functional.classification import binary_roc

from ..metrics import ImageLevelScores, to_unit
from ..metrics.bootstrap import bootstrap_interval, image_auroc_statistic, patch_auroc_statistic
from ..viz import localisation_auroc, log_overlays, patch_heatmap, side_by_side


def youden_threshold(score: torch.Tensor, label: torch.Tensor) -> float:
    """Threshold on ``score`` maximising sensitivity + specificity - 1 (``score >= t`` is positive).

    Scores are sums of patch probabilities; they are scaled into [0, 1] for torchmetrics (which would
    otherwise squash them through a sigmoid) and the threshold is mapped back.
    """
    unit, scale = to_unit(score)
    fpr, tpr, thr = binary_roc(unit, label)
    best = int(torch.argmax(tpr - fpr))
    return float(thr[best].clamp(max=1.0)) * scale


def broadcast_from_rank0(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers of ``module`` to every rank (no-op outside DDP).

    Used after a data-dependent initialisation, which each rank would otherwise compute on its own batch.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for t in module.state_dict().values():
            torch.distributed.broadcast(t, src=0)


def warm_ema(
    avg: torch.Tensor, new: torch.Tensor, num_averaged: torch.Tensor, decay: float, warmup: bool
) -> torch.Tensor:
    """One step of an exponential moving average of weights: ``decay * avg + (1 - decay) * new``, with
    the decay capped at (1 + t) / (10 + t) after t updates when ``warmup`` (so a short run is not
    evaluated with an average dominated by its initial weights). The ``avg_fn`` of the SSL-GAN's and
    FixMatch's :class:`torch.optim.swa_utils.AveragedModel`."""
    if warmup:
        t = float(num_averaged)
        decay = min(decay, (1 + t) / (10 + t))
    return decay * avg + (1 - decay) * new


def sensitivity_specificity(score: torch.Tensor, label: torch.Tensor, threshold: float) -> tuple[float, float]:
    pred = score >= threshold
    pos, neg = label == 1, label == 0
    sens = pred[pos].float().mean().item() if pos.any() else float("nan")
    spec = (~pred[neg]).float().mean().item() if neg.any() else float("nan")
    return sens, spec


class PatchTask(pl.LightningModule):
    """Base class: subclasses implement :meth:`eval_logits` (``B x 3 x s x s`` in [0, 1] -> ``B x K``).

    At the end of validation and test it also logs ``<stage>/localisation_auroc``: the mean over
    annotated images of the pixel AUROC of the Gaussian-blurred patch heatmap against the union lesion
    mask (paper 000, section 4), and the first ``num_overlays`` overlays (W&B images with a
    ``WandbLogger``, else PNGs in ``<log_dir>/overlays``). After a test it also logs the 95%
    bootstrap interval of the image and patch AUROC over the test photographs
    (``test/image_auroc_low`` / ``_high``, ``test/patch_auroc_low`` / ``_high``) and keeps the
    per-photograph predictions in :attr:`eval_records` (``{"test": {"image_index", "probs",
    "targets"}}``, numpy, images x patches) for benchmarks that pool several runs.
    """

    #: overlays logged per validation/test epoch
    num_overlays: int = 4
    #: bootstrap replicates of the test intervals
    bootstrap_resamples: int = 1000

    def __init__(self) -> None:
        super().__init__()
        for stage in ("val", "test"):
            setattr(self, f"{stage}_patch_auroc", BinaryAUROC())
            setattr(self, f"{stage}_image", ImageLevelScores())
        # chosen on validation, used on test; saved in checkpoints
        self.register_buffer("image_threshold", torch.tensor(float("nan")))
        self.eval_records: dict[str, dict[str, np.ndarray]] = {}

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Patches in [0, 1] as ``self.model`` takes them: as they are for a network with pretrained
        weights (it normalises them with the weights' statistics itself,
        :func:`retinalab.weights.normalise_inputs`), else mapped to [-1, 1] with ``input_range: symmetric``."""
        if hasattr(self.model, "input_mean"):
            return x
        return x * 2 - 1 if self.hparams.get("input_range") == "symmetric" else x

    def eval_logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def diseased_logit(logits: torch.Tensor) -> torch.Tensor:
        """l = logit(diseased) - logit(healthy), so sigmoid(l) = softmax(logits)[:, 1] for K = 2."""
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits[:, 1:].logsumexp(1) - logits[:, 0]

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        logits = self.eval_logits(batch["image"])
        label = batch["label"]
        loss = torch.nn.functional.cross_entropy(logits, label)
        prob = torch.sigmoid(self.diseased_logit(logits))
        target = (label > 0).long()
        getattr(self, f"{stage}_patch_auroc").update(prob, target)
        getattr(self, f"{stage}_image").update(prob, target, batch["image_index"], batch["patch_index"])
        self.log(f"{stage}/loss", loss, batch_size=len(logits), sync_dist=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_epoch_end(self, stage: str) -> None:
        patch = getattr(self, f"{stage}_patch_auroc")
        image = getattr(self, f"{stage}_image")
        self.log(f"{stage}/patch_auroc", patch.compute(), prog_bar=True)
        self.log(f"{stage}/image_auroc", image.compute(), prog_bar=True)
        with image.sync_context():  # one gather of the whole stage's predictions
            _, score, label = image.scores()
            images, probs, targets = (t.cpu().numpy() for t in image.per_image())
        if stage == "val" and label.unique().numel() == 2:
            self.image_threshold.fill_(youden_threshold(score, label))
        thr = float(self.image_threshold)
        if thr == thr:  # not NaN
            sens, spec = sensitivity_specificity(score, label, thr)
            self.log(f"{stage}/sensitivity", sens)
            self.log(f"{stage}/specificity", spec)
            self.log(f"{stage}/image_threshold", thr)
        self._localisation(stage, images, probs)
        if stage == "test":
            self._test_intervals(images, probs, targets)
        patch.reset()
        image.reset()

    def _test_intervals(self, images: np.ndarray, probs: np.ndarray, targets: np.ndarray) -> None:
        """95% bootstrap intervals of the test AUROCs over photographs; keeps the predictions
        (``images`` x patches, from :meth:`ImageLevelScores.per_image`)."""
        complete = ~np.isnan(probs).any(1)
        images, probs, targets = images[complete], probs[complete], targets[complete]
        self.eval_records["test"] = {"image_index": images, "probs": probs, "targets": targets}
        if len(images) < 2:
            return
        for name, stat in (
            ("image_auroc", image_auroc_statistic(probs.sum(1), targets.max(1))),
            ("patch_auroc", patch_auroc_statistic(probs, targets)),
        ):
            low, high = bootstrap_interval([stat], self.bootstrap_resamples)
            if low == low:
                self.log(f"test/{name}_low", low)
                self.log(f"test/{name}_high", high)

    def _localisation(self, stage: str, images: np.ndarray, probs: np.ndarray) -> None:
        """Localisation AUROC of the blurred heatmaps and overlays (``images`` x patches probabilities)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        cache = getattr(dm, "cache", None)
        if cache is None or getattr(dm, "serve", "patches") != "patches" or self.trainer.sanity_checking:
            return
        grid = dm.grid
        t = cache.thumbs.shape[1]
        scores, overlays = [], []
        for i, p in zip(images.tolist(), probs, strict=True):
            if np.isnan(p).any() or len(p) != grid.num_patches:
                continue
            heat = patch_heatmap(p, grid, t)
            if cache.image_labels[i] >= 0 and cache.images[i]["annotated"]:
                a = localisation_auroc(heat, np.asarray(cache.mask_thumbs[i]).astype(bool))
                if a == a:
                    scores.append(a)
            if len(overlays) < self.num_overlays:
                overlays.append((cache.images[i]["image_id"], side_by_side(np.array(cache.thumbs[i]), heat)))
        if scores:
            self.log(f"{stage}/localisation_auroc", float(np.mean(scores)))
        log_overlays(
            self, f"{stage}/overlays", overlays, png_name=stage
        )  # on every rank: Trainer.log_dir is a collective

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """One image (all its patches) -> ``{"image_id", "probs" (G), "score" (sum of sigmoids)}``.

        Items the datamodule could not decode (``"error"``) are passed through for the writer.
        """
        if "error" in batch:
            return {"image_id": batch["image_id"], "error": batch["error"]}
        prob = torch.sigmoid(self.diseased_logit(self.eval_logits(batch["image"])))
        return {"image_id": batch["image_id"], "probs": prob.float().cpu(), "score": float(prob.sum())}
