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
    probs = torch.tensor([
        [0.7, 0.2, 0.1, 0.0],  # grade 0
        [0.2, 0.6, 0.1, 0.1],  # grade 1
        [0.1, 0.2, 0.4, 0.3],  # grade 2
        [0.0, 0.1, 0.2, 0.7],  # grade 3
    ])
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
