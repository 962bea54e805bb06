"""Bootstrap confidence intervals for AUROCs measured on a finite test set.

A test set of 13 photographs cannot tell an image AUROC of 0.6 from one of 0.9; an interval says
how far a figure could move on another draw of test images. :func:`bootstrap_interval` resamples
the test items (photographs: a photograph's patches stay together, so the patch-level interval
accounts for patches of one photograph being alike) with replacement and reports the percentile
interval of a statistic, or of the mean of several runs' statistics (one resample of each run's
own test set per replicate: the interval of a mean over seeds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Statistic = Callable[[np.ndarray], float]


def exact_auroc(score: np.ndarray, label: np.ndarray) -> float:
    """Exact AUROC of ``score`` for binary ``label`` (NaN with a single class).

    The Mann-Whitney form (tied scores share their average rank), in numpy: the bootstrap calls
    it thousands of times and torchmetrics' ``binary_auroc`` costs ~1 ms a call in overhead alone.
    Equal to ``binary_auroc(thresholds=None)`` (tested).
    """
    score, label = np.asarray(score, np.float64).ravel(), np.asarray(label).ravel() == 1
    n_pos = int(label.sum())
    n_neg = label.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based rank of each distinct score
    u = average_rank[inverse][label].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def bootstrap_interval(
    runs: Sequence[tuple[Statistic, int]],
    num_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-run statistics.

    Args:
        runs: ``(statistic, n_items)`` per run; ``statistic(idx)`` computes the run's figure on its
            items ``idx`` (an int array of length ``n_items`` drawn with replacement).
        num_resamples: bootstrap replicates.
        level: coverage of the interval.
        seed: seed of the resampling (the same inputs give the same interval).

    Returns:
        ``(low, high)``; NaN when no replicate gave a finite value (e.g. a single class).
    """
    if not runs:
        raise ValueError("bootstrap_interval needs at least one run")
    rng = np.random.default_rng(seed)
    values = np.empty(num_resamples)
    for b in range(num_resamples):
        values[b] = np.mean([stat(rng.integers(0, n, n)) for stat, n in runs])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def image_auroc_statistic(scores: np.ndarray, labels: np.ndarray) -> tuple[Statistic, int]:
    """``(statistic, n)`` for :func:`bootstrap_interval`: image AUROC over resampled photographs."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    return (lambda idx: exact_auroc(scores[idx], labels[idx])), len(scores)


def patch_auroc_statistic(probs: np.ndarray, labels: np.ndarray) -> tuple[Statistic, int]:
    """``(statistic, n)``: patch AUROC over resampled photographs (``probs``, ``labels``: images x patches)."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    return (lambda idx: exact_auroc(probs[idx].ravel(), labels[idx].ravel())), len(probs)


def difference_statistic(a: tuple[Statistic, int], b: tuple[Statistic, int]) -> tuple[Statistic, int]:
    """``(statistic, n)``: run ``a``'s figure minus run ``b``'s on the same resampled items, for two
    runs that scored the same test items in the same order (two methods at one seed). Pairing keeps
    what the two share (which photographs are hard) out of the interval of their difference."""
    (stat_a, n_a), (stat_b, n_b) = a, b
    if n_a != n_b:
        raise ValueError(f"a paired difference needs the same test items: {n_a} against {n_b}")
    return (lambda idx: stat_a(idx) - stat_b(idx)), n_a
