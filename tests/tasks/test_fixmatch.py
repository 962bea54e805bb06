"""FixMatch (the semi-supervised control of paper 000's benchmark): its loss against a hand computation,
distribution alignment, the weak and strong views the datamodule serves, the EMA it evaluates and the
error a config without strong views gets. That it learns is in tests/learning/test_learning.py."""

from __future__ import annotations

import math

import pytest
import torch

from retinalab.datamodules import PatchDataModule
from retinalab.tasks import FixMatchTask
from retinalab.tasks.fixmatch_losses import fixmatch_unsup_loss
from tests.data.idrid.data import make_idrid


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def test_unlabelled_loss_by_hand():
    """Eq. 4 of Sohn et al.: pseudo-labels from the weak views where max q >= tau, cross-entropy of the
    strong views against them, averaged over every unlabelled patch (unconfident ones count 0)."""
    weak = torch.tensor([[3.0, 0.0], [0.0, 0.2], [-2.5, 0.5], [0.0, 1.0]], dtype=torch.float64)
    strong = torch.tensor([[1.0, 0.5], [0.3, -0.3], [0.0, 2.0], [2.0, 0.0]], dtype=torch.float64)
    tau = 0.9
    q = [_softmax(r) for r in weak.tolist()]  # max q: 0.953, 0.550, 0.953, 0.731
    keep = [max(p) >= tau for p in q]
    assert keep == [True, False, True, False]
    pseudo = [p.index(max(p)) for p in q]
    by_hand = sum(-math.log(_softmax(s)[y]) for s, y, k in zip(strong.tolist(), pseudo, keep, strict=True) if k) / 4
    loss, mask, labels = fixmatch_unsup_loss(weak, strong, tau)
    assert loss.item() == pytest.approx(by_hand, rel=1e-9)
    assert mask.tolist() == keep and labels.tolist() == pseudo
    # the weak logits give no gradient: the pseudo-label is a target, not a prediction to move
    w = weak.clone().requires_grad_(True)
    s = strong.clone().requires_grad_(True)
    fixmatch_unsup_loss(w, s, tau)[0].backward()
    assert w.grad is None and s.grad.abs().sum() > 0

    # distribution alignment: q * (p_labelled / p_model), renormalised, then the threshold
    align = torch.tensor([0.5, 3.0], dtype=torch.float64)
    aligned = []
    for p in q:
        r = [p[0] * 0.5, p[1] * 3.0]
        aligned.append([v / sum(r) for v in r])
    keep = [max(p) >= tau for p in aligned]
    assert keep == [False, False, True, True]  # the minority class's confident patches gain, the majority's lose
    pseudo = [p.index(max(p)) for p in aligned]
    by_hand = sum(-math.log(_softmax(s)[y]) for s, y, k in zip(strong.tolist(), pseudo, keep, strict=True) if k) / 4
    loss, mask, labels = fixmatch_unsup_loss(weak, strong, tau, align)
    assert loss.item() == pytest.approx(by_hand, rel=1e-9) and mask.tolist() == keep and labels.tolist() == [0, 1, 1, 1]


def test_p_model_is_a_warm_running_mean_of_the_unlabelled_predictions():
    task = FixMatchTask(width=0.1, distribution_alignment=True, alignment_momentum=0.99)
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])  # mean softmax: [0.7689, 0.2311]
    mean = torch.softmax(logits, 1).mean(0)
    expected = torch.tensor([0.5, 0.5])
    for t in range(3):
        task._update_p_model(logits)
        m = min(0.99, (1 + t) / (10 + t))
        expected = m * expected + (1 - m) * mean
    assert torch.allclose(task.p_model, expected) and int(task.p_model_updates) == 3
    task.p_labelled.copy_(torch.tensor([0.8, 0.2]))
    assert torch.allclose(task.alignment(), torch.tensor([0.8, 0.2]) / expected)
    assert FixMatchTask(width=0.1).alignment() is None


def test_the_datamodule_serves_a_weak_and_a_strong_view_mu_times_the_labelled_batch(tmp_path):
    root = make_idrid(tmp_path / "IDRiD", seg=(6, 2), grades={"train": [0, 0, 0, 0], "test": [0, 0]})
    dm = PatchDataModule(
        "idrid",
        str(root),
        image_size=128,
        patch_size=32,
        stride=32,
        patch_out=32,
        val_size=3,
        test_size=3,
        num_labeled_images=3,
        unlabeled=True,
        unlabeled_ratio=3,
        unlabeled_strong=True,
        strong_cutout=0.5,
        batch_size=8,
        cache_dir=str(tmp_path / "c"),
        cache_workers=0,
        split_file=str(tmp_path / "s.json"),
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    batch, _, _ = next(iter(loader))
    lab, unl = batch["labeled"], batch["unlabeled"]
    assert lab["image"].shape == (8, 3, 32, 32) and "image_strong" not in lab
    assert unl["image"].shape == unl["image_strong"].shape == (24, 3, 32, 32) and (unl["label"] == -1).all()
    # the strong view is another picture of the same patch: cut out and recoloured, not the weak view
    diff = (unl["image"] - unl["image_strong"]).abs().flatten(1).mean(1)
    assert (diff > 0.01).float().mean() > 0.9
    grey = ((unl["image_strong"] - 127 / 255).abs() < 1e-6).all(1).flatten(1).float().mean(1)
    assert (grey > 0).float().mean() > 0.5  # most strong views carry a Cutout hole (grey 127); sides drawn in [0, 0.5]
    with pytest.raises(ValueError, match="unlabeled_ratio must be a positive int"):
        PatchDataModule("idrid", str(root), unlabeled_ratio=0)


def test_without_strong_views_or_unlabelled_batches_the_task_says_which_option_to_set():
    task = FixMatchTask(width=0.1)
    x = {"image": torch.rand(4, 3, 32, 32), "label": torch.tensor([0, 1, 0, 1])}
    with pytest.raises(ValueError, match="data.unlabeled: true"):
        task.training_step(x, 0)
    with pytest.raises(ValueError, match="data.unlabeled_strong: true"):
        task.training_step(
            {"labeled": x, "unlabeled": {"image": x["image"], "label": -torch.ones(4, dtype=torch.long)}}, 0
        )


def test_flexmatch_thresholds_by_hand_and_the_record_they_come_from():
    """FlexMatch (Zhang et al. 2021): beta_c = sigma_c / max(max sigma, never confident), T_c =
    beta_c / (2 - beta_c) tau; the record keeps each unlabelled patch's latest confident class."""
    from retinalab.tasks.fixmatch_losses import flexmatch_thresholds

    tau = 0.9
    assert flexmatch_thresholds(torch.full((10,), -1, dtype=torch.int8), 2, tau).tolist() == [
        0.0,
        0.0,
    ]  # warm-up: nothing confident
    seen = torch.tensor(
        [0, 0, 0, 0, 1, -1, -1, -1, -1, -1, -1, -1], dtype=torch.int8
    )  # sigma = (4, 1), 7 never confident
    beta = [4 / 7, 1 / 7]
    assert flexmatch_thresholds(seen, 2, tau).tolist() == pytest.approx([b / (2 - b) * tau for b in beta])
    seen = torch.tensor(
        [0] * 8 + [1] * 2 + [-1], dtype=torch.int8
    )  # sigma = (8, 2), 1 unused: the majority class sets the scale
    assert flexmatch_thresholds(seen, 2, tau).tolist() == pytest.approx([tau, (0.25 / 1.75) * tau])

    # a class threshold per prediction: the lesion patch at 0.7 passes its lowered threshold, the healthy one at
    # 0.8 does not
    weak = torch.log(torch.tensor([[0.8, 0.2], [0.3, 0.7]]))
    _, mask, pseudo = fixmatch_unsup_loss(weak, torch.zeros(2, 2), torch.tensor([0.9, 0.5]))
    assert mask.tolist() == [False, True] and pseudo.tolist() == [0, 1]

    # the record: positions from (cache row, patch), only confident predictions written, others kept
    task = FixMatchTask(width=0.1, thresholding="flexmatch", threshold=tau)
    task.flex_offset = torch.tensor([-1, 0, 4])  # cache row 0 is not unlabelled; rows 1 and 2 have 4 patches each
    task.flex_seen = torch.full((8,), -1, dtype=torch.int8)
    task.flex_seen[2] = 1
    batch = {"image_index": torch.tensor([1, 2, 1]), "patch_index": torch.tensor([3, 0, 2])}
    logits = torch.log(torch.tensor([[0.95, 0.05], [0.02, 0.98], [0.6, 0.4]]))
    task._update_flex_seen(batch, logits)
    assert task.flex_seen.tolist() == [
        -1,
        -1,
        1,
        0,
        1,
        -1,
        -1,
        -1,
    ]  # row 1 patch 2 was not confident: its earlier record stays
    assert task.class_thresholds().tolist() == pytest.approx(flexmatch_thresholds(task.flex_seen, 2, tau).tolist())


def test_the_lesion_safe_strong_view_keeps_colours_that_randaugment_changes():
    """`strong_policy: lesion_safe` leaves out the RandAugment operations that change what tells an
    exudate from a druse or a haemorrhage from pigment (solarise, posterise, equalise, autocontrast,
    saturation): a patch's hue (mean green over mean red) stays within a few percent, where
    FixMatch's RandAugment list moves it far in some views."""
    import numpy as np

    from retinalab.datamodules.transforms import patch_strong_transform

    rng = np.random.default_rng(0)
    patch = np.zeros((32, 32, 3), np.uint8)
    patch[...] = (200, 90, 40)  # fundus orange
    patch[12:18, 12:18] = (110, 15, 12)  # a haemorrhage
    patch = np.clip(patch + rng.normal(0, 3, patch.shape), 0, 255).astype(np.uint8)

    def hue_shifts(policy: str) -> np.ndarray:
        tf = patch_strong_transform(32, cutout=0.0, policy=policy, seed=3)
        views = [tf(image=patch)["image"].astype(float) for _ in range(60)]
        hue = patch[..., 1].mean() / patch[..., 0].mean()
        return np.array([abs(v[..., 1].mean() / max(v[..., 0].mean(), 1) - hue) / hue for v in views])

    assert hue_shifts("lesion_safe").max() < 0.12
    assert hue_shifts("randaugment").max() > 0.3
    with pytest.raises(ValueError, match="lesion_safe"):
        patch_strong_transform(32, policy="cifar")


def test_pseudo_label_quality_against_hidden_truth_by_hand():
    """The diagnostics of how good the pseudo-labels are, against labels the loss never sees: unknown
    patches (-1) are left out, precision and recall are about the lesion class, recall counts the
    lesions the threshold dropped."""
    from retinalab.tasks.fixmatch_losses import pseudo_label_counts, pseudo_label_quality

    pseudo = torch.tensor([1, 1, 0, 0, 1, 0, 1])
    mask = torch.tensor([True, True, True, False, False, True, True])
    truth = torch.tensor([1, 0, 0, 1, 1, -1, -1])
    counts = pseudo_label_counts(pseudo, mask, truth)
    # confident and known: patches 0-2 (right: 0 and 2); lesion pseudo-labels 0, 1 (right: 0); true lesions 0, 3,
    # 4 of 5 known
    assert counts.tolist() == [3, 2, 2, 1, 3, 5]
    q = pseudo_label_quality(counts + pseudo_label_counts(pseudo[:1], mask[:1], truth[:1]))  # summed over two batches
    assert q == pytest.approx(
        {
            "pseudo_accuracy": 3 / 4,
            "pseudo_lesion_precision": 2 / 3,
            "pseudo_lesion_recall": 2 / 4,
            "true_lesion_share": 4 / 6,
        }
    )
    assert (
        pseudo_label_quality(pseudo_label_counts(pseudo, torch.zeros(7, dtype=torch.bool), torch.full((7,), -1))) == {}
    )
