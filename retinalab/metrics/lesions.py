"""Paper 001's evaluation (section 4.1): per-lesion pixel AUC-ROC and AUC-PR (IDRiD challenge style),
grading accuracy and quadratic-weighted kappa, and Messidor's referable / normal AUCs.

Pixel metrics stream in constant memory (:class:`PixelCurve`: 28,673 log-spaced score bins, exact
to 0.05% of a score, near 0 and near 1 alike), and take soft targets: the lesion fraction of each
downsized pixel, so that a mask shrunk from 4288 px to 512 px is scored with the lesion area it had.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryAveragePrecision,
    MulticlassAccuracy,
    MulticlassCohenKappa,
)

# Scores are binned on the float16 value of min(p, 1 - p): log-spaced bins (relative step 2^-11) that
# resolve scores near 0 and near 1 alike; 14,336 float16 values lie in [0, 0.5].
_HALF = 0x3800  # float16 bits of 0.5
PIXEL_BINS = 2 * _HALF + 1


def score_bins(p: torch.Tensor) -> torch.Tensor:
    """Monotone bin index in ``[0, PIXEL_BINS)`` of probabilities ``p`` (any shape; clamped to [0, 1]).

    ``p <= 0.5`` -> the float16 bit pattern of ``p``; ``p > 0.5`` -> ``2 * bits(0.5) - bits(1 - p)``.
    Two scores share a bin only when ``min(p, 1 - p)`` agrees to float16 precision (about 0.05%
    relative), so scores that differ anywhere in (0, 1) by more than that are told apart: 6e-8 from
    1e-7, 0.0041 from 0.0042, 0.9995 from 0.9999."""
    p = p.float().clamp(0, 1)
    q = torch.minimum(p, 1 - p).half().view(torch.int16).long()
    return torch.where(p <= 0.5, q, 2 * _HALF - q)


def curve_from_counts(pos: torch.Tensor, neg: torch.Tensor) -> tuple[float, float]:
    """(AUROC, average precision) from per-bin positive and negative weights (bins ordered by score).

    Ties (one bin) are handled as scikit-learn does: AUROC counts a tied positive-negative pair as half
    (the trapezoid between thresholds), AP steps once per distinct threshold
    (``sum_k (R_k - R_{k-1}) P_k``). NaN when a class is absent."""
    pos, neg = pos.double().flip(0), neg.double().flip(0)  # from the highest score down
    keep = (pos + neg) > 0
    pos, neg = pos[keep], neg[keep]
    p_total, n_total = pos.sum(), neg.sum()
    if p_total <= 0 or n_total <= 0:
        return float("nan"), float("nan")
    tp, fp = pos.cumsum(0), neg.cumsum(0)
    tpr = torch.cat([tp.new_zeros(1), tp / p_total])
    fpr = torch.cat([fp.new_zeros(1), fp / n_total])
    auroc = torch.trapezoid(tpr, fpr).item()
    precision = tp / (tp + fp)
    recall_step = pos / p_total
    ap = (recall_step * precision).sum().item()
    return auroc, ap


class PixelCurve(Metric):
    """Pixel AUROC and average precision of one lesion, streamed in constant memory.

    Each pixel adds its weight to its score's bin (:func:`score_bins`, 28,673 log-spaced bins): one
    positive-weight and one negative-weight histogram, summed across DDP ranks. A soft target ``t`` in
    [0, 1] (the lesion fraction of a downsized pixel) adds ``t`` positive and ``1 - t`` negative
    weight, which is what scoring the full-resolution mask with the downsized prediction would count.
    With binary targets the result equals scikit-learn's ``roc_auc_score`` / ``average_precision_score``
    up to the bins' 0.05% relative resolution (tested); torchmetrics' 200 linear bins return AUROC 0.5
    for scores that are all below 0.005 however they are ordered.

    ``update(probs, target)`` (same shape, any); ``compute()`` -> ``(auroc, ap)`` tensors (NaN when a
    class is absent)."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("pos", default=torch.zeros(PIXEL_BINS, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("neg", default=torch.zeros(PIXEL_BINS, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        bins = score_bins(probs.flatten())
        t = target.flatten().to(torch.float64).clamp(0, 1)
        self.pos += torch.bincount(bins, weights=t, minlength=PIXEL_BINS)
        self.neg += torch.bincount(bins, weights=1 - t, minlength=PIXEL_BINS)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        auroc, ap = curve_from_counts(self.pos, self.neg)
        return torch.tensor(auroc), torch.tensor(ap)


class LesionPixelMetrics(nn.Module):
    """Pixel AUC-ROC and AUC-PR per lesion, over the images annotated for that lesion.

    Args:
        lesions: lesion names, in the channel order of the masks (MA, HE, EX, SE).
        thresholds: ``None`` (default): :class:`PixelCurve` (log-spaced bins, soft targets); an int:
            torchmetrics' curves with that many linear bins (binary targets; poor below 1/thresholds).

    ``update(probs B x L x H x W, masks B x L x H x W, known B x L)``, masks binary or soft (lesion
    fraction per pixel); ``compute()`` returns ``{"<lesion>/auc_roc", "<lesion>/auc_pr", "mean/auc_roc",
    "mean/auc_pr"}`` (lesions with no positive pixel yet are left out of the means).
    """

    def __init__(self, lesions: Sequence[str], thresholds: int | None = None) -> None:
        super().__init__()
        self.lesions = list(lesions)
        self.thresholds = thresholds
        if thresholds is None:
            self.curves = nn.ModuleList([PixelCurve() for _ in self.lesions])
        else:
            self.roc = nn.ModuleList([BinaryAUROC(thresholds=thresholds) for _ in self.lesions])
            self.pr = nn.ModuleList([BinaryAveragePrecision(thresholds=thresholds) for _ in self.lesions])
        self.register_buffer("positives", torch.zeros(len(self.lesions), dtype=torch.float64), persistent=False)

    def update(self, probs: torch.Tensor, masks: torch.Tensor, known: torch.Tensor | None = None) -> None:
        if known is None:
            known = torch.ones(probs.shape[:2], dtype=torch.bool, device=probs.device)
        for i in range(len(self.lesions)):
            sel = known[:, i].bool()
            if not sel.any():
                continue
            p, t = probs[sel, i].flatten().float().clamp(0, 1), masks[sel, i].flatten()
            if self.thresholds is None:
                self.curves[i].update(p, t)
            else:
                self.roc[i].update(p, (t > 0.5).long())
                self.pr[i].update(p, (t > 0.5).long())
            self.positives[i] += float(t.double().sum())

    def compute(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        rocs, prs = [], []
        positives = self.positives.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(positives)  # every rank must report the same lesions
        for i, name in enumerate(self.lesions):
            if float(positives[i]) <= 0:
                continue
            if self.thresholds is None:
                out[f"{name}/auc_roc"], out[f"{name}/auc_pr"] = self.curves[i].compute()
            else:
                out[f"{name}/auc_roc"] = self.roc[i].compute()
                out[f"{name}/auc_pr"] = self.pr[i].compute()
            rocs.append(out[f"{name}/auc_roc"])
            prs.append(out[f"{name}/auc_pr"])
        if rocs:
            out["mean/auc_roc"] = torch.stack(rocs).mean()
            out["mean/auc_pr"] = torch.stack(prs).mean()
        return out

    def reset(self) -> None:
        for m in self.curves if self.thresholds is None else [*self.roc, *self.pr]:
            m.reset()
        self.positives.zero_()


def grading_metrics(num_classes: int = 5) -> MetricCollection:
    """Accuracy and quadratic-weighted kappa over grades (a MetricCollection over ``probs B x K``, ``grade B``)."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "kappa": MulticlassCohenKappa(num_classes, weights="quadratic"),
        }
    )


class BinaryDRMetrics(nn.Module):
    """Messidor's binary protocol (Zoom-in-Net): referable (grade >= ``referable_from``) and normal
    (grade 0 vs the rest) AUC and accuracy, from grade probabilities.

    ``update(probs B x K, grade B)``; p(referable) = sum of p(grade >= referable_from), p(abnormal) =
    1 - p(grade 0).
    """

    def __init__(self, referable_from: int = 2) -> None:
        super().__init__()
        self.referable_from = referable_from
        self.metrics = nn.ModuleDict(
            {
                "referable_auc": BinaryAUROC(),
                "referable_acc": BinaryAccuracy(),
                "normal_auc": BinaryAUROC(),
                "normal_acc": BinaryAccuracy(),
            }
        )

    def update(self, probs: torch.Tensor, grade: torch.Tensor) -> None:
        p_ref = probs[:, self.referable_from :].sum(1).clamp(0, 1)
        p_abn = (1 - probs[:, 0]).clamp(0, 1)
        ref, abn = (grade >= self.referable_from).long(), (grade > 0).long()
        self.metrics["referable_auc"].update(p_ref, ref)
        self.metrics["referable_acc"].update(p_ref, ref)
        self.metrics["normal_auc"].update(p_abn, abn)
        self.metrics["normal_acc"].update(p_abn, abn)

    def compute(self) -> dict[str, torch.Tensor]:
        return {k: m.compute() for k, m in self.metrics.items()}

    def reset(self) -> None:
        for m in self.metrics.values():
            m.reset()
