"""FixMatch's arithmetic, apart from its task: the unsupervised loss with its threshold and distribution
alignment, FlexMatch's class thresholds, and the pseudo-labels' quality against hidden labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def flexmatch_thresholds(seen: torch.Tensor, num_classes: int, tau: float) -> torch.Tensor:
    """FlexMatch's class thresholds (Zhang et al. 2021, Eq. 6-7, with the threshold warm-up).

    Args:
        seen: per unlabelled sample, the class of its latest prediction that reached ``tau``, or -1
            if none has yet.
        num_classes: K.
        tau: the fixed threshold (FixMatch's 0.95).

    Returns:
        ``K`` thresholds T_c = M(beta_c) tau, with beta_c = sigma_c / max(max_c sigma_c, u), sigma_c
        the samples last confidently predicted as c, u those never, and M(x) = x / (2 - x). Until some
        sample is confident, every beta is 0 (so is every threshold).
    """
    sigma = torch.bincount(seen[seen >= 0].long(), minlength=num_classes).float()
    unused = (seen < 0).sum().float()
    if unused >= len(seen):
        return torch.zeros(num_classes, device=seen.device)
    beta = sigma / torch.maximum(sigma.max(), unused)
    return beta / (2 - beta) * tau


def pseudo_label_counts(pseudo: torch.Tensor, mask: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Counts for the quality of pseudo-labels against hidden truth, to be summed over batches.

    Args:
        pseudo: ``B`` pseudo-labels (argmax of the weak predictions).
        mask: ``B`` bools, where the pseudo-label passed the threshold.
        truth: ``B`` true labels, -1 where unknown (those patches are left out).

    Returns:
        ``[confident known, confident right, lesion pseudo-labels, right lesion pseudo-labels, true
        lesions, known]`` as a float tensor (see :func:`pseudo_label_quality`).
    """
    known = truth >= 0
    conf = mask & known
    lesion_pred, lesion_true = conf & (pseudo > 0), known & (truth > 0)
    return torch.stack(
        [
            conf.sum(),
            (conf & (pseudo == truth)).sum(),
            lesion_pred.sum(),
            (lesion_pred & (pseudo == truth)).sum(),
            lesion_true.sum(),
            known.sum(),
        ]
    ).float()


def pseudo_label_quality(counts: torch.Tensor) -> dict[str, float]:
    """``pseudo_accuracy``, ``pseudo_lesion_precision``, ``pseudo_lesion_recall`` and ``true_lesion_share``
    from summed :func:`pseudo_label_counts`; a ratio without a denominator is left out."""
    conf, right, lesion_pred, lesion_right, lesion_true, known = counts.tolist()
    out = {}
    for name, num, den in (
        ("pseudo_accuracy", right, conf),
        ("pseudo_lesion_precision", lesion_right, lesion_pred),
        ("pseudo_lesion_recall", lesion_right, lesion_true),
        ("true_lesion_share", lesion_true, known),
    ):
        if den > 0:
            out[name] = num / den
    return out


def fixmatch_unsup_loss(
    logits_weak: torch.Tensor,
    logits_strong: torch.Tensor,
    threshold: float | torch.Tensor,
    align: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FixMatch's unlabelled loss (Eq. 4 of Sohn et al. 2020).

    Args:
        logits_weak: ``B x K`` logits of the weak views (detached inside).
        logits_strong: ``B x K`` logits of the strong views of the same patches.
        threshold: tau, the confidence above which a weak prediction becomes a pseudo-label, or ``K``
            thresholds, one per predicted class (FlexMatch).
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
        mask = conf >= (threshold[pseudo] if isinstance(threshold, torch.Tensor) else threshold)
    loss = (F.cross_entropy(logits_strong, pseudo, reduction="none") * mask).mean()
    return loss, mask, pseudo
