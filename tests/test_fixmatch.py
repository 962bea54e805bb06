"""FixMatch (the semi-supervised control of paper 000's benchmark): its loss against a hand computation,
distribution alignment, the weak and strong views the datamodule serves, the EMA it evaluates and the
error a config without strong views gets. That it learns is in tests/test_learning.py."""

from __future__ import annotations

import math

import pytest
import torch

from retinalab.datamodules import PatchDataModule
from retinalab.tasks import FixMatchTask
from retinalab.tasks.fixmatch import fixmatch_unsup_loss
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
    dm = PatchDataModule("idrid", str(root), image_size=128, patch_size=32, stride=32, patch_out=32, val_size=3, test_size=3,
                         num_labeled_images=3, unlabeled=True, unlabeled_ratio=3, unlabeled_strong=True, strong_cutout=0.5,
                         batch_size=8, cache_dir=str(tmp_path / "c"), cache_workers=0, split_file=str(tmp_path / "s.json"))
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
        task.training_step({"labeled": x, "unlabeled": {"image": x["image"], "label": -torch.ones(4, dtype=torch.long)}}, 0)


def check_fixmatch_run(run) -> None:
    """What a finished FixMatch fit must show (called by tests/test_learning.py's FixMatch test, which
    fits it through the CLI): its diagnostics logged, p_labelled the labelled patches' class shares,
    p_model updated every step, and evaluation through the weight average, which differs from the
    trained weights."""
    task = run.model
    metrics = run.trainer.callback_metrics
    assert {"fixmatch/mask_rate", "fixmatch/pseudo_lesion_share", "fixmatch/loss_unsup", "fixmatch/p_model_lesion"} <= set(metrics)
    assert 0.0 < float(metrics["fixmatch/mask_rate"]) <= 1.0  # some unlabelled patches were pseudo-labelled
    assert int(task.p_model_updates) == run.trainer.global_step == int(task.ema.n_averaged)
    counts = run.datamodule.class_counts()
    assert torch.allclose(task.p_labelled, torch.tensor(counts / counts.sum(), dtype=torch.float32))
    x = next(iter(run.datamodule.val_dataloader()))["image"][:16]
    task.eval()
    with torch.no_grad():
        assert torch.equal(task.eval_logits(x), task.ema.module(x * 2 - 1))
        assert not torch.allclose(task.ema.module(x * 2 - 1), task(x))
