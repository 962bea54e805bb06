"""Paper 001's evaluation (section 4.1): per-lesion pixel AUC-ROC and AUC-PR (IDRiD challenge style),
grading accuracy and quadratic-weighted kappa, and Messidor's referable / normal AUCs.

Pixel metrics are binned (``thresholds`` bins, torchmetrics' constant-memory mode): memory does not
grow with the number of pixels or images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryAveragePrecision,
    MulticlassAccuracy,
    MulticlassCohenKappa,
)


class LesionPixelMetrics(nn.Module):
    """Pixel AUC-ROC and AUC-PR per lesion, over the images annotated for that lesion.

    Args:
        lesions: lesion names, in the channel order of the masks (MA, HE, EX, SE).
        thresholds: bins of the binned curves (memory is ``lesions x thresholds`` counts).

    ``update(probs B x L x H x W, masks B x L x H x W, known B x L)``; ``compute()`` returns
    ``{"<lesion>/auc_roc", "<lesion>/auc_pr", "mean/auc_roc", "mean/auc_pr"}`` (lesions with no positive
    pixel yet are left out of the means).
    """

    def __init__(self, lesions: Sequence[str], thresholds: int = 200) -> None:
        super().__init__()
        self.lesions = list(lesions)
        self.roc = nn.ModuleList([BinaryAUROC(thresholds=thresholds) for _ in self.lesions])
        self.pr = nn.ModuleList([BinaryAveragePrecision(thresholds=thresholds) for _ in self.lesions])
        self.register_buffer("positives", torch.zeros(len(self.lesions), dtype=torch.long), persistent=False)

    def update(self, probs: torch.Tensor, masks: torch.Tensor, known: torch.Tensor | None = None) -> None:
        if known is None:
            known = torch.ones(probs.shape[:2], dtype=torch.bool, device=probs.device)
        for i in range(len(self.lesions)):
            sel = known[:, i].bool()
            if not sel.any():
                continue
            p, t = probs[sel, i].flatten().float().clamp(0, 1), masks[sel, i].flatten().long()
            self.roc[i].update(p, t)
            self.pr[i].update(p, t)
            self.positives[i] += int(t.sum())

    def compute(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        rocs, prs = [], []
        positives = self.positives.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(positives)  # every rank must report the same lesions
        for i, name in enumerate(self.lesions):
            if int(positives[i]) == 0:
                continue
            out[f"{name}/auc_roc"] = self.roc[i].compute()
            out[f"{name}/auc_pr"] = self.pr[i].compute()
            rocs.append(out[f"{name}/auc_roc"])
            prs.append(out[f"{name}/auc_pr"])
        if rocs:
            out["mean/auc_roc"] = torch.stack(rocs).mean()
            out["mean/auc_pr"] = torch.stack(prs).mean()
        return out

    def reset(self) -> None:
        for m in [*self.roc, *self.pr]:
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
        self.metrics = nn.ModuleDict({
            "referable_auc": BinaryAUROC(), "referable_acc": BinaryAccuracy(),
            "normal_auc": BinaryAUROC(), "normal_acc": BinaryAccuracy(),
        })

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
