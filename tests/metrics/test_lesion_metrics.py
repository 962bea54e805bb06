"""Paper 001's metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retinalab.metrics.lesions import BinaryDRMetrics, LesionPixelMetrics, grading_metrics


def test_pixel_auc_roc_and_pr_per_lesion_skip_unannotated_images():
    m = LesionPixelMetrics(["MA", "EX"])
    # image 0: MA pixels scored 0.9 (lesion), 0.7, 0.6 (lesion), 0.2, 0.1 on a 1 x 5 strip
    probs = torch.zeros(2, 2, 1, 5)
    masks = torch.zeros(2, 2, 1, 5)
    probs[0, 0, 0] = torch.tensor([0.9, 0.7, 0.6, 0.2, 0.1])
    masks[0, 0, 0] = torch.tensor([1.0, 0, 1, 0, 0])
    # image 1 is not annotated for MA: its (misleading) MA scores must not count
    probs[1, 0, 0] = torch.tensor([0.95, 0.95, 0.95, 0.95, 0.95])
    # EX: perfect separation on image 1 only
    probs[1, 1, 0] = torch.tensor([0.8, 0.3, 0.3, 0.3, 0.3])
    masks[1, 1, 0, 0] = 1
    known = torch.tensor([[True, False], [False, True]])
    m.update(probs, masks, known)
    out = m.compute()
    # ROC: positive 0.9 beats 3 negatives, 0.6 beats 2 of 3 -> 5/6; AP: precision 1 at the first hit, 2/3 at the second
    assert out["MA/auc_roc"].item() == pytest.approx(5 / 6, abs=1e-3)
    assert out["MA/auc_pr"].item() == pytest.approx((1 + 2 / 3) / 2, abs=1e-3)
    assert out["EX/auc_roc"].item() == pytest.approx(1.0) and out["EX/auc_pr"].item() == pytest.approx(1.0)
    assert out["mean/auc_roc"].item() == pytest.approx((5 / 6 + 1) / 2, abs=1e-3)
    m.reset()
    assert m.compute() == {}


def test_quadratic_kappa_and_accuracy_against_the_formula():
    y = torch.tensor([0, 1, 2, 2, 4, 3, 0])
    pred = torch.tensor([0, 2, 2, 1, 4, 4, 1])
    k = 5
    conf = np.zeros((k, k))
    for a, b in zip(y.tolist(), pred.tolist(), strict=True):
        conf[a, b] += 1
    w = np.array([[(i - j) ** 2 for j in range(k)] for i in range(k)]) / (k - 1) ** 2
    expected = np.outer(conf.sum(1), conf.sum(0)) / conf.sum()
    kappa = 1 - (w * conf).sum() / (w * expected).sum()
    metrics = grading_metrics(k)
    metrics.update(torch.nn.functional.one_hot(pred, k).float(), y)
    out = metrics.compute()
    assert out["kappa"].item() == pytest.approx(kappa, abs=1e-6)
    assert out["acc"].item() == pytest.approx(3 / 7)


def test_referable_and_normal_aucs_follow_the_messidor_protocol():
    probs = torch.tensor(
        [
            [0.7, 0.2, 0.1, 0.0],  # grade 0
            [0.2, 0.6, 0.1, 0.1],  # grade 1
            [0.1, 0.2, 0.4, 0.3],  # grade 2
            [0.0, 0.1, 0.2, 0.7],  # grade 3
        ]
    )
    grade = torch.tensor([0, 1, 2, 3])
    m = BinaryDRMetrics(referable_from=2)
    m.update(probs, grade)
    out = m.compute()
    # p(referable) = p2 + p3 = 0.1, 0.2, 0.7, 0.9: both referable above both others
    assert out["referable_auc"].item() == pytest.approx(1.0) and out["referable_acc"].item() == pytest.approx(1.0)
    # p(abnormal) = 1 - p0 = 0.3, 0.8, 0.9, 1.0: grade 0 lowest
    assert out["normal_auc"].item() == pytest.approx(1.0)
    m.update(torch.tensor([[0.1, 0.9, 0.0, 0.0]]), torch.tensor([0]))  # a normal eye scored 0.9 abnormal
    # pairs (abnormal > normal): vs 0.3 all 3; vs 0.9: 0.8 no, 0.9 tie (1/2), 1.0 yes -> 4.5 / 6
    assert m.compute()["normal_auc"].item() == pytest.approx(0.75)


def _exact(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """AUROC (ties count half) and average precision (one step per distinct score), by sorting."""
    order = np.argsort(-s, kind="mergesort")
    ss, yy = s[order], y[order]
    last = np.r_[np.diff(ss) != 0, True]
    tp, fp = np.cumsum(yy)[last], np.cumsum(~yy)[last]
    tpr, fpr = np.r_[0, tp / tp[-1]], np.r_[0, fp / fp[-1]]
    return float(np.trapezoid(tpr, fpr)), float(np.sum(np.diff(tpr) * tp / (tp + fp)))


def test_pixel_curves_are_exact_where_linear_bins_are_blind():
    """Perfectly separated scores all below 0.005 (a G early in training): 1.0 and 1.0, where
    torchmetrics' 200 linear bins return AUROC 0.5 and AP = the prevalence; scores near 1 likewise."""
    from torchmetrics.classification import BinaryAUROC

    for neg, pos in ((0.001, 0.004), (0.9990, 0.9998)):
        probs = torch.tensor([neg] * 1000 + [pos] * 10).view(1, 1, 1, -1)
        masks = torch.tensor([0.0] * 1000 + [1.0] * 10).view(1, 1, 1, -1)
        m = LesionPixelMetrics(["MA"])
        m.update(probs, masks)
        out = m.compute()
        assert out["MA/auc_roc"].item() == pytest.approx(1.0) and out["MA/auc_pr"].item() == pytest.approx(1.0)
    assert BinaryAUROC(thresholds=200)(
        torch.tensor([0.001] * 1000 + [0.004] * 10), torch.tensor([0] * 1000 + [1] * 10)
    ).item() == pytest.approx(0.5)


def test_pixel_curves_match_the_sorted_computation_streamed_over_batches():
    rng = np.random.default_rng(0)
    y = rng.random(60_000) < 0.03
    s = (1 / (1 + np.exp(-rng.normal(-4 + 3 * y, 1.5)))).astype(np.float32)
    s[:500] = 0.25  # a block of tied scores
    m = LesionPixelMetrics(["EX"])
    for chunk in np.array_split(np.arange(len(y)), 7):  # batches of images, streamed
        m.update(
            torch.from_numpy(s[chunk]).view(1, 1, 1, -1),
            torch.from_numpy(y[chunk].astype(np.float32)).view(1, 1, 1, -1),
        )
    out = m.compute()
    auroc, ap = _exact(y, s)
    assert out["EX/auc_roc"].item() == pytest.approx(auroc, abs=2e-4) and out["EX/auc_pr"].item() == pytest.approx(
        ap, abs=2e-4
    )


def test_soft_targets_score_a_downsized_mask_as_the_full_resolution_one():
    """A 4x4 block of pixels scored alike equals one downsized pixel with lesion fraction 5/16: the
    soft target counts 5 positive and 11 negative pixels there, as the full-resolution mask does."""
    rng = np.random.default_rng(1)
    small_scores = rng.random((8, 8)).astype(np.float32)
    full_mask = rng.random((32, 32)) < 0.2
    full_scores = np.kron(small_scores, np.ones((4, 4), np.float32))  # each small pixel's score over its 4x4 block
    fraction = full_mask.reshape(8, 4, 8, 4).mean(axis=(1, 3)).astype(np.float32)
    soft, full = LesionPixelMetrics(["HE"]), LesionPixelMetrics(["HE"])
    soft.update(torch.from_numpy(small_scores).view(1, 1, 8, 8), torch.from_numpy(fraction).view(1, 1, 8, 8))
    full.update(
        torch.from_numpy(full_scores).view(1, 1, 32, 32),
        torch.from_numpy(full_mask.astype(np.float32)).view(1, 1, 32, 32),
    )
    a, b = soft.compute(), full.compute()
    assert a["HE/auc_roc"].item() == pytest.approx(b["HE/auc_roc"].item(), abs=1e-9)
    assert a["HE/auc_pr"].item() == pytest.approx(b["HE/auc_pr"].item(), abs=1e-9)
    # a binary mask made by "any lesion pixel" (what the patch labels use) inflates the positives
    inflated = LesionPixelMetrics(["HE"])
    inflated.update(
        torch.from_numpy(small_scores).view(1, 1, 8, 8),
        torch.from_numpy((fraction > 0).astype(np.float32)).view(1, 1, 8, 8),
    )
    assert float(inflated.positives[0]) > float(soft.positives[0]) == pytest.approx(full_mask.sum() / 16)


def test_score_bins_and_curves_at_their_edges():
    """Cases the strip above does not reach (found by make mutation): scores and soft targets outside
    [0, 1] are clamped, a single negative pixel is enough for a curve, one class alone gives NaN."""
    from retinalab.metrics.lesions import PIXEL_BINS, PixelCurve, curve_from_counts, score_bins

    bins = score_bins(torch.tensor([-0.3, 0.0, 0.25, 0.5, 0.75, 1.0, 1.7]))
    assert bins[0] == bins[1] == 0 and bins[-1] == bins[-2] == PIXEL_BINS - 1
    assert (bins[1:-1].diff() > 0).all()  # monotone in the score
    # one positive (score 0.9) and one negative (0.2) pixel: ranked right, AUROC 1 and AP 1
    pos, neg = torch.zeros(PIXEL_BINS), torch.zeros(PIXEL_BINS)
    pos[score_bins(torch.tensor(0.9))] = 1
    neg[score_bins(torch.tensor(0.2))] = 1
    assert curve_from_counts(pos, neg) == (pytest.approx(1.0), pytest.approx(1.0))
    assert all(np.isnan(v) for v in curve_from_counts(pos, torch.zeros(PIXEL_BINS)))
    assert all(np.isnan(v) for v in curve_from_counts(torch.zeros(PIXEL_BINS), neg))
    # soft targets beyond [0, 1] count as 0 / 1: a target of 1.5 adds one positive and no negative weight
    m = PixelCurve()
    m.update(torch.tensor([0.9, 0.2, 0.4]), torch.tensor([1.5, -0.5, 0.25]))
    assert float(m.pos.sum()) == pytest.approx(1.25) and float(m.neg.sum()) == pytest.approx(1.75)
    auroc, ap = m.compute()
    # positives 1 @0.9 and 0.25 @0.4; negatives 1 @0.2 and 0.75 @0.4: pairs ordered 1*1 + 1*0.75 + 0.25*1, tied
    # 0.25*0.75
    assert float(auroc) == pytest.approx((1 + 0.75 + 0.25 + 0.5 * 0.25 * 0.75) / (1.25 * 1.75))
    assert float(ap) == pytest.approx((1 / 1.25) * 1.0 + (0.25 / 1.25) * (1.25 / 2.0))


def test_linear_bins_option_agrees_on_spread_scores_and_reset_forgets():
    """thresholds: N (torchmetrics' linear bins) gives the same curve as the default where the scores are
    spread out; a lesion with no positive pixel is left out of the means; reset() starts over."""
    probs = torch.zeros(1, 2, 1, 6)
    masks = torch.zeros(1, 2, 1, 6)
    probs[0, 0, 0] = torch.tensor([0.95, 0.35, 0.8, 0.15, 0.6, 0.05])
    masks[0, 0, 0] = torch.tensor([1.0, 1, 0, 0, 1, 0])
    probs[0, 1, 0] = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, 0.2])  # EX: no lesion pixel
    exact, linear = LesionPixelMetrics(["MA", "EX"]), LesionPixelMetrics(["MA", "EX"], thresholds=1001)
    for m in (exact, linear):
        m.update(probs, masks)
    a, b = exact.compute(), linear.compute()
    assert set(a) == set(b) == {"MA/auc_roc", "MA/auc_pr", "mean/auc_roc", "mean/auc_pr"}
    # MA: positives 0.95, 0.6, 0.35; negatives 0.8, 0.15, 0.05 -> 7 of 9 pairs ordered
    assert float(a["MA/auc_roc"]) == pytest.approx(7 / 9) and float(b["MA/auc_roc"]) == pytest.approx(7 / 9, abs=1e-3)
    assert float(a["MA/auc_pr"]) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)  # precision at each lesion pixel, ranked
    assert float(b["MA/auc_pr"]) == pytest.approx(float(a["MA/auc_pr"]), abs=1e-3)
    assert float(a["mean/auc_roc"]) == float(a["MA/auc_roc"])
    for m in (exact, linear):
        m.reset()
        assert m.compute() == {}
