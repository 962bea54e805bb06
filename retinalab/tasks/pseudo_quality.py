"""How good paper 001's pseudo masks are, measured against the truth only synthetic data has.

Paper 001 refines G on graded photographs with the grader's attention maps as pseudo masks, on the
premise that those maps are better lesion masks there than G's own. Real datasets have no masks for
their graded photographs; ``retinalab synth`` keeps the ones it drew (``<root>/_truth``), and
``SegmentationDataModule(image_level_truth="eval")`` hands them to validation and test batches of the
image-level set as ``truth_fraction``. On those batches three maps are scored, per lesion, by pixel
AUC-PR (:class:`retinalab.metrics.lesions.LesionPixelMetrics`, soft targets):

* ``G``: G's lesion probabilities at the input size;
* ``attention``: the attention maps alpha_l at their own resolution (f_low, a quarter of the input),
  against the truth averaged over each of their cells;
* ``pseudo``: the targets G's L_CE gets on these photographs, as the loss uses them (the attention
  maps resized to G's output, binarised with ``pseudo_threshold``; the drawn masks in the ``oracle``
  arm, ``pseudo_source: truth``, 0/1 as G's masks on the pixel-annotated photographs are: a pixel any
  part of which is lesion counts wholly, so they rank every lesion pixel first, AUROC 1, but score
  AUC-PR below 1 against the lesion shares where lesions are a few pixels across).

Keys: ``<source>/<lesion>/auc_pr``, ``<source>/mean/auc_pr`` (and ``auc_roc``); a task logs them as
``<split>/vs_truth/<key>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..metrics.lesions import LesionPixelMetrics
from ..utils.errors import ConfigError
from ..viz import lesion_overlay

SOURCES = ("G", "attention", "pseudo")


def batch_truth(batch: dict[str, Any]) -> torch.Tensor | None:
    """The drawn masks of a graded batch: each pixel's lesion share where the loader gives it
    (``truth_fraction``), else the 0/1 masks (``truth``); ``None`` without either."""
    truth = batch.get("truth_fraction", batch.get("truth"))
    return None if truth is None else truth.float()


def at_size(truth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``truth`` (B x L x H x W lesion shares) at ``size``: the share of lesion in each cell (area average)."""
    if tuple(truth.shape[-2:]) == tuple(size):
        return truth
    return F.interpolate(truth, size=size, mode="area")


def pseudo_targets(task: Any, alpha: torch.Tensor | None, batch: dict[str, Any], size: tuple[int, int]) -> torch.Tensor:
    """G's L_CE targets on a graded batch of ``task`` (a joint-stage CollaborativeTask), as the loss uses
    them: the attention maps resized to ``size`` (binarised with ``pseudo_threshold``), or the drawn
    masks (``pseudo_source: truth``)."""
    if task.hparams.pseudo_source == "truth":
        truth = batch.get("truth")
        if truth is None:
            raise ConfigError(
                "pseudo_source='truth' (the oracle arm) needs the drawn masks on the graded photographs: "
                "a synthetic dataset from retinalab synth with data.image_level_truth: all"
            )
        return at_size(truth.float(), size)
    pseudo = task.grader.pseudo_masks(alpha, size)
    if task.hparams.pseudo_threshold is not None:
        pseudo = (pseudo >= task.hparams.pseudo_threshold).to(pseudo.dtype)
    return pseudo


def quality_maps(
    task: Any, batch: dict[str, Any], masks: torch.Tensor | None = None, out: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The maps scored on a graded batch of ``task``: ``G`` (G's masks),
    ``attention`` (the attention maps at their resolution; with the lesion attention) and ``pseudo``
    (G's targets as the loss uses them; with ``semi``). ``masks`` / ``out``: already computed."""
    x = batch["image"]
    masks = task.masks(x) if masks is None else masks
    if out is None and task.use_attention:
        out = task.grade(x, masks)
    maps = {"G": masks}
    alpha = (out or {}).get("alpha")
    if alpha is not None:
        maps["attention"] = alpha
    if task.hparams.semi and (alpha is not None or task.hparams.pseudo_source == "truth"):
        maps["pseudo"] = pseudo_targets(task, alpha, batch, x.shape[-2:])
    return maps


class PseudoMaskQuality(nn.Module):
    """Pixel AUC-PR and AUROC per lesion of each of :data:`SOURCES` against the drawn masks.

    ``update(maps, truth)``: ``maps`` source -> ``B x L x h x w`` in [0, 1] (any resolution: the truth is
    averaged to it), ``truth`` ``B x L x H x W`` lesion shares. ``compute()`` returns the sources that
    were updated since the last ``reset()``.
    """

    def __init__(self, lesions: Sequence[str], thresholds: int | None = None) -> None:
        super().__init__()
        self.metrics = nn.ModuleDict({s: LesionPixelMetrics(lesions, thresholds) for s in SOURCES})
        self._seen: set[str] = set()

    def update(self, maps: dict[str, torch.Tensor], truth: torch.Tensor) -> None:
        for source, m in maps.items():
            if source not in self.metrics:
                raise ValueError(f"unknown pseudo-mask source {source!r}; choose from {list(SOURCES)}")
            self.metrics[source].update(m.float(), at_size(truth.to(m.device), m.shape[-2:]))
            self._seen.add(source)

    def compute(self) -> dict[str, torch.Tensor]:
        return {f"{s}/{k}": v for s in SOURCES if s in self._seen for k, v in self.metrics[s].compute().items()}

    def reset(self) -> None:
        for m in self.metrics.values():
            m.reset()
        self._seen.clear()

    @property
    def updated(self) -> bool:
        return bool(self._seen)


@torch.no_grad()
def pseudo_mask_quality(
    task: Any, batches: Iterable[dict[str, Any] | None], thresholds: int | None = None
) -> dict[str, float]:
    """Score ``task``'s (a joint-stage :class:`retinalab.tasks.CollaborativeTask`) G masks, attention
    maps and pseudo masks against the truth on every batch that carries it (e.g. the image-level
    validation loader of ``SegmentationDataModule(image_level_truth="eval")`` on synthetic data), in
    evaluation mode; returns ``{"<source>/<lesion>/auc_pr": value, ...}`` (see the module docstring).

    Raises:
        ValueError: if no batch carries drawn masks (not a synthetic dataset, or ``image_level_truth: off``).
    """
    quality = PseudoMaskQuality(task.lesions, thresholds).to(task.device)
    was_training = task.training
    task.eval()
    try:
        for batch in batches:
            truth = None if batch is None else batch_truth(batch)
            if truth is None:
                continue
            batch = {k: v.to(task.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            quality.update(quality_maps(task, batch), truth)
    finally:
        task.train(was_training)
    if not quality.updated:
        raise ValueError(
            "no batch carries the drawn lesion masks (truth / truth_fraction): pseudo-mask quality needs a synthetic "
            "dataset drawn by retinalab synth and SegmentationDataModule(image_level_truth='eval')"
        )
    return {k: float(v) for k, v in quality.compute().items()}


def quality_sheet(
    image: torch.Tensor, truth: torch.Tensor, maps: dict[str, torch.Tensor], lesions: Sequence[str]
) -> np.ndarray:
    """One photograph's row for W&B: the photograph, then the truth, G's masks, the attention maps and
    the pseudo masks over it (each resized to the photograph), side by side.

    Shapes: ``image`` 3 x H x W in [0, 1]; ``truth`` and every map L x h x w in [0, 1]."""
    rgb = (image.permute(1, 2, 0).clamp(0, 1) * 255).byte().cpu().numpy()
    size = rgb.shape[:2]
    panels = [rgb]
    for m in (truth, *(maps[s] for s in SOURCES if s in maps)):
        m = (
            F.interpolate(m[None].float(), size=size, mode="bilinear", align_corners=False)[0]
            if tuple(m.shape[-2:]) != size
            else m.float()
        )
        panels.append(lesion_overlay(rgb, m.clamp(0, 1).cpu().numpy(), list(lesions)))
    return np.concatenate(panels, axis=1)


@torch.no_grad()
def mask_dependence(task: Any, batches: Iterable[dict[str, Any] | None]) -> dict[str, float]:
    """How much a joint-stage ``task``'s grader uses G's masks, on graded ``batches`` in evaluation mode:
    each photograph graded with G's masks and again with the masks replaced by zeros (no lesion).

    Returns ``grade_change`` (share of photographs whose predicted grade changes), ``alpha_change``
    (mean absolute change of the attention maps) and ``alpha_std`` (their spread over pixels and
    photographs with G's masks: near 0 when the attention is still a constant); the two attention
    figures are NaN without the lesion attention (``Lesion(Pretrained)``). A grader whose attention
    ignores the masks scores ``grade_change`` 0 whatever G learns, so no pseudo mask can help it grade.
    """
    was_training = task.training
    task.eval()
    changed, images, alpha_change, alphas = 0, 0, [], []
    try:
        for batch in batches:
            if batch is None:
                continue
            x = batch["image"].to(task.device)
            masks = task.masks(x)
            with_masks, without = task.grade(x, masks), task.grade(x, torch.zeros_like(masks))
            changed += int((with_masks["logits"].argmax(1) != without["logits"].argmax(1)).sum())
            images += len(x)
            if "alpha" in with_masks:
                alpha_change.append(float((with_masks["alpha"] - without["alpha"]).abs().mean()))
                alphas.append(with_masks["alpha"].float().flatten().cpu())
    finally:
        task.train(was_training)
    if not images:
        raise ValueError("mask_dependence: no photograph in the batches")
    return {
        "grade_change": changed / images,
        "alpha_change": float(np.mean(alpha_change)) if alpha_change else float("nan"),
        "alpha_std": float(torch.cat(alphas).std()) if alphas else float("nan"),
    }
