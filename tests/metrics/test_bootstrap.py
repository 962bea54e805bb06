"""Bootstrap intervals of test AUROCs: the exact AUROC, the resampling, and what a test run logs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torchmetrics.functional.classification import binary_auroc

from retinalab.datamodules import PatchDataModule
from retinalab.metrics import ImageLevelScores
from retinalab.metrics.bootstrap import (
    bootstrap_interval,
    difference_statistic,
    exact_auroc,
    image_auroc_statistic,
    patch_auroc_statistic,
)
from retinalab.tasks import PatchClassifierTask
from tests.data.idrid.data import make_idrid


def test_exact_auroc_by_hand_and_against_torchmetrics():
    # pairs (positive, negative): (0.35 vs 0.1) win, (0.35 vs 0.4) lose, (0.8 vs both) win -> 3 of 4
    assert exact_auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    # a tie between a positive and a negative counts one half
    assert exact_auroc(np.array([0.5, 0.5, 0.9]), np.array([0, 1, 1])) == 0.75
    # sums of 64 probabilities (outside [0, 1]) keep their order
    assert exact_auroc(np.array([30.0, 31.0, 40.0]), np.array([0, 1, 1])) == 1.0
    assert math.isnan(exact_auroc(np.array([0.2, 0.3]), np.array([1, 1])))
    rng = np.random.default_rng(0)
    score = np.round(rng.random(500), 2)  # many ties
    label = (rng.random(500) < score).astype(int)
    expected = float(binary_auroc(torch.from_numpy(score), torch.from_numpy(label), thresholds=None))
    assert exact_auroc(score, label) == pytest.approx(expected, abs=1e-6)


def test_a_paired_difference_resamples_both_runs_together():
    """Two methods scored on the same photographs: their difference is resampled photograph by
    photograph, so what they share (which photographs are hard) stays out of its interval. A method
    against itself differs by exactly 0 on every resample; a method against a slightly worse copy has
    a paired interval under half as wide as either method's own, and above 0."""
    rng = np.random.default_rng(2)
    label = np.arange(100) % 2
    hard = rng.normal(0, 1.5, 100)  # what both methods get wrong alike
    a = label + hard
    b = a + rng.normal(0, 0.3, 100) - 0.3 * label  # a, a little worse on the positives
    same = difference_statistic(image_auroc_statistic(a, label), image_auroc_statistic(a, label))
    assert bootstrap_interval([same]) == (0.0, 0.0)
    lo, hi = bootstrap_interval(
        [difference_statistic(image_auroc_statistic(a, label), image_auroc_statistic(b, label))]
    )
    one_lo, one_hi = bootstrap_interval([image_auroc_statistic(a, label)])
    assert 0 < lo <= exact_auroc(a, label) - exact_auroc(b, label) <= hi and hi - lo < (one_hi - one_lo) / 2
    with pytest.raises(ValueError, match="same test items"):
        difference_statistic(image_auroc_statistic(a, label), image_auroc_statistic(a[:50], label[:50]))


def test_bootstrap_interval_covers_the_estimate_and_shrinks_with_more_photographs():
    rng = np.random.default_rng(1)

    def draw(n):
        label = np.arange(n) % 2
        return label + rng.normal(0, 2.0, n), label  # a true AUROC of about 0.64

    small, large = draw(30), draw(480)
    lo_s, hi_s = bootstrap_interval([image_auroc_statistic(*small)])
    lo_l, hi_l = bootstrap_interval([image_auroc_statistic(*large)])
    assert lo_s <= exact_auroc(*small) <= hi_s and lo_l <= exact_auroc(*large) <= hi_l
    # the width falls about as 1/sqrt(n): 16x the photographs, about 4x narrower
    assert 2.5 < (hi_s - lo_s) / (hi_l - lo_l) < 6
    assert bootstrap_interval([image_auroc_statistic(*small)]) == (lo_s, hi_s)  # seeded
    # the mean of three runs: narrower than one run's interval, centred on the mean
    runs = [draw(60) for _ in range(3)]
    lo, hi = bootstrap_interval([image_auroc_statistic(*r) for r in runs])
    one_lo, one_hi = bootstrap_interval([image_auroc_statistic(*runs[0])])
    assert lo <= np.mean([exact_auroc(*r) for r in runs]) <= hi and hi - lo < one_hi - one_lo


def test_patch_interval_resamples_photographs_not_patches():
    """Patches of one photograph are alike: resampling photographs gives a wider interval than the
    same number of independent patches would, and a photograph's patches move together."""
    rng = np.random.default_rng(2)
    diseased = np.arange(30) % 2 == 1  # lesion patches only in diseased photographs, as in the data
    labels = ((rng.random((30, 64)) < 0.4) & diseased[:, None]).astype(int)
    # a per-photograph offset shared by its 64 patches (exposure, pigmentation)
    probs = labels * 1.0 + rng.normal(0, 0.5, (30, 1)) + rng.normal(0, 0.5, (30, 64))
    lo, hi = bootstrap_interval([patch_auroc_statistic(probs, labels)])
    independent = bootstrap_interval([(lambda idx: exact_auroc(probs.ravel()[idx], labels.ravel()[idx]), probs.size)])
    assert lo <= exact_auroc(probs.ravel(), labels.ravel()) <= hi
    assert hi - lo > 2.5 * (independent[1] - independent[0])


@pytest.mark.parametrize("dense", [True, False])
def test_all_replicates_at_once_equal_one_at_a_time(dense, monkeypatch):
    """The vectorised AUROC over replicates (photographs drawn c times weigh c times) equals exact_auroc
    on each resampled array, ties and single-class replicates included, so the interval does too; with
    the per-photograph tables and with the sorted items (what large test sets use), in small chunks."""
    from retinalab.metrics.bootstrap import _AUROCStatistic

    monkeypatch.setattr(_AUROCStatistic, "DENSE_CELLS", 4_000_000 if dense else 0)
    monkeypatch.setattr(_AUROCStatistic, "CHUNK_CELLS", 1000)
    rng = np.random.default_rng(5)
    label = (rng.random(12) < 0.25).astype(int)  # few positives: some replicates draw none (NaN)
    score = np.round(rng.random(12), 1)  # many ties
    probs = np.round(rng.random((12, 8)), 1)
    patches = (rng.random((12, 8)) < 0.3).astype(int)
    idx = rng.integers(0, 12, (400, 12))
    for stat, n in (
        image_auroc_statistic(score, label),
        patch_auroc_statistic(probs, patches),
        difference_statistic(image_auroc_statistic(score, label), image_auroc_statistic(score[::-1].copy(), label)),
    ):
        one_by_one = np.asarray([stat(i) for i in idx])
        np.testing.assert_allclose(stat.many(idx), one_by_one, rtol=0, atol=1e-12, equal_nan=True)
        assert n == 12 and np.isnan(one_by_one).any() == (stat.many(idx) != stat.many(idx)).any()
        plain = (lambda i, stat=stat: stat(i), n)  # no vectorised form: the one-at-a-time path
        np.testing.assert_allclose(bootstrap_interval([(stat, n)]), bootstrap_interval([plain]), atol=1e-12)


def test_image_level_scores_per_image_table():
    m = ImageLevelScores()
    m.update(torch.tensor([0.9, 0.1, 0.2]), torch.tensor([1, 0, 0]), torch.tensor([7, 7, 3]), torch.tensor([0, 1, 1]))
    m.update(torch.tensor([0.4]), torch.tensor([0]), torch.tensor([3]), torch.tensor([0]))
    images, probs, targets = m.per_image()
    assert images.tolist() == [3, 7]
    assert torch.allclose(probs, torch.tensor([[0.4, 0.2], [0.9, 0.1]]))
    assert targets.tolist() == [[0, 0], [1, 0]]
    m.update(torch.tensor([0.5]), torch.tensor([1]), torch.tensor([5]), torch.tensor([0]))
    images, probs, _ = m.per_image()  # a patch never seen is NaN
    assert images.tolist() == [3, 5, 7] and probs[1, 0] == 0.5 and torch.isnan(probs[1, 1])


def test_a_test_run_logs_its_intervals_and_keeps_its_predictions(tmp_path):
    root = make_idrid(tmp_path / "IDRiD", seg=(6, 3), grades={"train": [0, 0, 0, 0], "test": [0, 0, 0]})
    dm = PatchDataModule(
        "idrid",
        str(root),
        image_size=128,
        patch_size=32,
        stride=32,
        patch_out=32,
        val_size=3,
        test_size=6,
        batch_size=32,
        cache_dir=str(tmp_path / "c"),
        cache_workers=0,
        split_file=str(tmp_path / "s.json"),
    )
    pl.seed_everything(0)
    task = PatchClassifierTask(width=0.1)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, dm)
    res = trainer.test(task, dm, verbose=False)[0]
    rec = task.eval_records["test"]
    assert rec["probs"].shape == rec["targets"].shape == (6, 16)
    assert sorted(rec["image_index"].tolist()) == sorted(dm.rows["test"].tolist())
    # the record reproduces the logged figures
    assert exact_auroc(rec["probs"].sum(1), rec["targets"].max(1)) == pytest.approx(res["test/image_auroc"], abs=1e-5)
    assert exact_auroc(rec["probs"].ravel(), rec["targets"].ravel()) == pytest.approx(res["test/patch_auroc"], abs=1e-5)
    for name in ("image_auroc", "patch_auroc"):
        low, value, high = (res[f"test/{name}{end}"] for end in ("_low", "", "_high"))
        assert low <= value <= high
        if 0 < value < 1:
            assert high - low > 0.01  # 6 photographs: a wide interval
        else:  # a perfect (or perfectly wrong) separation stays so in every resample: the interval is the point
            assert low == value == high, name
    # 96 patches of an epoch-old network are not separated perfectly (whether the 6 photographs are
    # depends on the floating-point details of training)
    assert 0 < res["test/patch_auroc"] < 1
