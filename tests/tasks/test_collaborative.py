"""Paper 001's collaborative task: losses (Eq. 3), pseudo masks into L_CE, and both stages fitting on
fake IDRiD layouts through `retinalab fit` as users call it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

import retinalab.tasks.collaborative as collab
from retinalab.cli import main
from retinalab.datamodules import GradingDataModule, SegmentationDataModule
from retinalab.tasks import CollaborativeTask
from tests.helpers.paths import REPO

TINY = dict(generator_width=0.0625, discriminator_width=0.0625, backbone="resnet18", num_overlays=1)


def test_l_seg_is_eq_3():
    torch.manual_seed(0)
    d_real, d_fake = torch.randn(4), torch.randn(5)
    logits, target = torch.randn(4, 4, 8, 8), (torch.rand(4, 4, 8, 8) > 0.7).float()
    l_ce = collab.masked_bce(logits, target)
    direct = torch.log(torch.sigmoid(d_real)).mean() + torch.log(1 - torch.sigmoid(d_fake)).mean()
    p = torch.sigmoid(logits)
    ce = (-(target * torch.log(p) + (1 - target) * torch.log(1 - p))).mean()
    assert torch.allclose(l_ce, ce, atol=1e-6)
    assert torch.allclose(collab.l_seg(d_real, d_fake, l_ce, 10.0), direct + 10 * ce, atol=1e-5)
    # D minimises -L_Adv
    assert torch.allclose(collab.discriminator_loss(d_real, d_fake), -direct, atol=1e-6)


def test_generator_adversarial_loss_is_the_non_saturating_one():
    """What G minimises in training (not l_seg, which is only logged): -E log D(X^I, G(X^I)), written
    out; its gradient stays large where D is sure the masks are fake (the saturating log(1 - D) does not)."""
    d_fake = torch.tensor([-6.0, -1.0, 0.0, 2.0], requires_grad=True)
    loss = collab.generator_adversarial_loss(d_fake)
    by_hand = -torch.log(1 / (1 + torch.exp(-d_fake.detach()))).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    loss.backward()
    # d/dl of -log sigmoid(l) / 4 = -(1 - sigmoid(l)) / 4: near -1/4 for a confident "fake"
    assert (
        d_fake.grad[0].item() == pytest.approx(-(1 - 1 / (1 + math.exp(6.0))) / 4, rel=1e-5)
        and d_fake.grad[0].item() < -0.24
    )


def test_masked_bce_counts_only_annotated_lesions():
    logits, target = torch.zeros(2, 4, 4, 4), torch.zeros(2, 4, 4, 4)
    logits[0, 3] = 20.0  # a confident wrong prediction on a lesion image 0 is not annotated for
    known = torch.tensor([[True, True, True, False], [True, True, True, True]])
    assert collab.masked_bce(logits, target, known).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(torch.zeros(1), torch.zeros(1)).item()
    )
    assert collab.masked_bce(logits, target).item() > 1.0


def test_stage_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="stage must be"):
        CollaborativeTask(stage="both")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CollaborativeTask(stage="joint", generator_ckpt=str(tmp_path / "nope.ckpt"), **TINY)
    torch.save({"state_dict": {"grader.low.0.weight": torch.zeros(1)}}, tmp_path / "g.ckpt")
    with pytest.raises(ValueError, match="no 'generator.' weights"):
        CollaborativeTask(stage="joint", generator_ckpt=str(tmp_path / "g.ckpt"), **TINY)


def _dm(idrid_root, tmp_path) -> SegmentationDataModule:
    return SegmentationDataModule(
        "idrid",
        str(idrid_root),
        image_size=64,
        val_size=1,
        batch_size=2,
        num_workers=0,
        image_level_dataset="idrid",
        image_level_root=str(idrid_root),
        image_level_val_size=1,
        augment=False,
        split_file=str(tmp_path / "split.json"),
    )


def test_pseudo_masks_from_attention_flow_into_l_ce(idrid_root, tmp_path, monkeypatch):
    """In the joint stage the attention maps, resized, are the L_CE targets of the image-level images."""
    calls, pseudo = [], []
    real_bce, real_pseudo = collab.masked_bce, collab.LesionAttentionGrader.pseudo_masks
    monkeypatch.setattr(
        collab,
        "masked_bce",
        lambda logits, target, known=None: (calls.append((logits, target, known)), real_bce(logits, target, known))[1],
    )
    monkeypatch.setattr(
        collab.LesionAttentionGrader,
        "pseudo_masks",
        lambda self, a, size: (pseudo.append(real_pseudo(self, a, size)), pseudo[-1])[1],
    )
    task = CollaborativeTask(stage="joint", **TINY)
    trainer = pl.Trainer(
        fast_dev_run=1,
        accelerator="cpu",
        logger=False,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, _dm(idrid_root, tmp_path))
    assert pseudo, "the joint step made no pseudo masks"
    targets = [t for _, t, k in calls if k is None]
    assert any(torch.equal(t, pseudo[0].detach()) for t in targets)
    image_level_call = next(c for c in calls if c[2] is None)
    assert image_level_call[0].shape == pseudo[0].shape == (2, 4, 64, 64)
    assert not image_level_call[1].requires_grad and image_level_call[0].requires_grad


def test_discriminator_and_generator_steps_update_the_right_networks(idrid_root, tmp_path):
    torch.manual_seed(0)
    task = CollaborativeTask(stage="joint", **TINY)
    before = {n: p.detach().clone() for n, p in task.named_parameters()}
    trainer = pl.Trainer(
        fast_dev_run=1,
        accelerator="cpu",
        logger=False,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, _dm(idrid_root, tmp_path))
    changed = {n.split(".")[0] for n, p in task.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed == {"generator", "grader", "discriminator"}
    # Lesion(Pretrained): G is frozen, there is no D, and G's masks weight the features without the attention module
    frozen = CollaborativeTask(stage="joint", semi=False, adversarial=False, lesion_features="masks", **TINY)
    assert not any(n.startswith(("w_low", "w_high", "to_context")) for n, _ in frozen.grader.named_parameters())
    g_before = {n: p.detach().clone() for n, p in frozen.generator.named_parameters()}
    pl.Trainer(
        fast_dev_run=1,
        accelerator="cpu",
        logger=False,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(frozen, _dm(idrid_root, tmp_path))
    assert frozen.discriminator is None
    assert all(torch.equal(g_before[n], p) for n, p in frozen.generator.named_parameters())
    out = frozen.grade(torch.rand(2, 3, 64, 64))
    assert out["logits"].shape == (2, 5) and "alpha" not in out
    with pytest.raises(ValueError, match="no attention maps to use as pseudo masks"):
        CollaborativeTask(stage="joint", semi=True, lesion_features="masks", **TINY)


def test_the_generators_adversarial_term_sends_no_gradient_into_the_discriminator(idrid_root, tmp_path):
    """Each joint step back-propagates D's loss, then G's and the grader's (with -log D(x, G(x)) in it).
    The second backward must leave D's gradients as they were, or D's next step would also follow G's
    objective; it must give G a gradient."""
    torch.manual_seed(0)
    task = CollaborativeTask(stage="joint", **TINY)
    calls = []
    real = task.manual_backward

    def grads(net):
        return [None if p.grad is None else p.grad.clone() for p in net.parameters()]

    def backward(loss, *args, **kwargs):
        d_before = grads(task.discriminator)
        real(loss, *args, **kwargs)
        calls.append((d_before, grads(task.discriminator), grads(task.generator)))

    task.manual_backward = backward
    trainer = pl.Trainer(
        fast_dev_run=1,
        accelerator="cpu",
        logger=False,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, _dm(idrid_root, tmp_path))
    assert len(calls) == 2  # D's loss, then G's + the grader's
    (_, d_after_d, g_after_d), (d_before, d_after, g_after) = calls
    assert any(x is not None and x.any() for x in d_after_d) and all(x is None for x in g_after_d)  # D's loss: D only
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(d_before, d_after, strict=True))
    assert any(x is not None and x.any() for x in g_after)


@pytest.mark.parametrize(("warmup", "threshold", "pseudo_logged"), [(0, None, True), (0, 0.5, True), (5, None, False)])
def test_pseudo_masks_wait_for_the_warm_up_and_can_be_thresholded(
    idrid_root, tmp_path, monkeypatch, warmup, threshold, pseudo_logged
):
    """pseudo_warmup_steps: the attention maps supervise G only after that many joint batches;
    pseudo_threshold turns them into 0/1 targets."""
    targets = []
    real_bce = collab.masked_bce
    monkeypatch.setattr(
        collab,
        "masked_bce",
        lambda logits, target, known=None: (targets.append((target, known)), real_bce(logits, target, known))[1],
    )
    task = CollaborativeTask(
        stage="joint", adversarial=False, pseudo_warmup_steps=warmup, pseudo_threshold=threshold, **TINY
    )
    trainer = pl.Trainer(
        fast_dev_run=2,
        accelerator="cpu",
        logger=False,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, _dm(idrid_root, tmp_path))
    pseudo = [t for t, k in targets if k is None]  # L_CE on image-level images (no annotation mask)
    assert bool(pseudo) == pseudo_logged and ("train/loss_ce_pseudo" in trainer.callback_metrics) == pseudo_logged
    if threshold is not None:
        assert all(set(torch.unique(t).tolist()) <= {0.0, 1.0} for t in pseudo)


def test_both_stages_fit_from_the_cli_on_fake_idrid_and_eyepacs(
    idrid_root, eyepacs_root, messidor_root, tmp_path, capsys
):
    conf = REPO / "conf" / "collaborative"
    common = [
        "--trainer.max_epochs=1",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.log_every_n_steps=1",
        "--data.image_size=64",
        "--data.num_workers=0",
        "--data.batch_size=2",
        "--model.generator_width=0.0625",
        "--model.discriminator_width=0.0625",
        "--model.num_overlays=1",
    ]
    seg_dir, grad_dir, joint_dir = tmp_path / "seg", tmp_path / "grading", tmp_path / "joint"
    assert (
        main(
            [
                "fit",
                "--config",
                str(conf / "idrid_stage1_seg.yaml"),
                f"--data.root={idrid_root}",
                "--data.val_size=1",
                f"--trainer.default_root_dir={seg_dir}",
                f"--trainer.logger.init_args.save_dir={seg_dir}",
                *common,
            ]
        )
        == 0
    )
    # stage 1b on EyePACS's layout (its test split with the solution file is the official test set)
    assert (
        main(
            [
                "fit",
                "--config",
                str(conf / "idrid_stage1_grading.yaml"),
                "--data.dataset=eyepacs",
                f"--data.root={eyepacs_root}",
                "--data.reader_args=null",
                "--data.val_size=2",
                f"--trainer.default_root_dir={grad_dir}",
                f"--trainer.logger.init_args.save_dir={grad_dir}",
                *common,
            ]
        )
        == 0
    )
    seg_ckpt = next(seg_dir.glob("logs/version_*/checkpoints/last.ckpt"))
    grad_ckpt = next(grad_dir.glob("logs/version_*/checkpoints/last.ckpt"))
    assert (
        main(
            [
                "fit",
                "--config",
                str(conf / "idrid_stage2.yaml"),
                f"--data.root={idrid_root}",
                f"--data.image_level_root={idrid_root}",
                "--data.val_size=1",
                "--data.image_level_val_size=1",
                f"--model.generator_ckpt={seg_ckpt}",
                f"--model.grader_ckpt={grad_ckpt}",
                "--model.pseudo_warmup_steps=0",  # pseudo masks from the first batch of this one-epoch run
                f"--trainer.default_root_dir={joint_dir}",
                f"--trainer.logger.init_args.save_dir={joint_dir}",
                *common,
            ]
        )
        == 0
    )
    import pandas as pd

    from retinalab.lightning.loggers import read_run_metrics

    metrics = read_run_metrics(next(joint_dir.glob("logs/version_*")))  # the run's offline W&B history
    for col in (
        "val/acc",
        "val/referable_auc",
        "val/MA/auc_pr",
        "val/mean/auc_roc",
        "train/loss_d",
        "train/loss_ce_pseudo",
    ):
        assert col in metrics and metrics[col].notna().any(), col
    # one validation image: a wrong grade makes the observed disagreement equal the expected one (kappa 0),
    # a right one makes both 0 (kappa 0/0, NaN)
    acc = metrics["val/acc"].dropna()
    kappa = metrics.loc[acc.index, "val/kappa"]
    assert len(acc) == 1 and acc.iloc[0] in (0.0, 1.0)
    assert kappa.iloc[0] == 0.0 if acc.iloc[0] == 0.0 else kappa.isna().all()
    sheets = list(joint_dir.glob("logs/version_*/wandb/offline-run-*/files/media/images/val/lesion_maps_*.png"))
    assert sheets  # photograph | lesion masks, photograph | attention maps
    # stage 2 really started from stage 1a's G
    joint = torch.load(next(joint_dir.glob("logs/version_*/checkpoints/last.ckpt")), weights_only=False)
    seg = torch.load(seg_ckpt, weights_only=False)
    assert joint["hyper_parameters"]["generator_ckpt"] == str(seg_ckpt)
    assert seg["state_dict"]["generator.head.weight"].shape == joint["state_dict"]["generator.head.weight"].shape
    # retinalab predict: lesion masks and attention maps over each test photograph, one row per image
    joint_ckpt = next(joint_dir.glob("logs/version_*/checkpoints/last.ckpt"))
    pred = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                "--config",
                str(conf / "idrid_stage2.yaml"),
                f"--data.root={idrid_root}",
                f"--data.image_level_root={idrid_root}",
                "--data.val_size=1",
                "--data.image_level_val_size=1",
                f"--ckpt_path={joint_ckpt}",
                f"--trainer.default_root_dir={pred}",
                f"--trainer.logger.init_args.save_dir={pred}",
                *common,
            ]
        )
        == 0
    )
    out = next(pred.glob("logs/version_*/predictions"))
    rows = pd.read_csv(out / "predictions.csv")
    assert len(rows) == 2 and {"predicted_grade", "p_referable", "max_EX", "picture"} <= set(
        rows.columns
    )  # IDRiD's 2 test images
    from PIL import Image

    assert Image.open(out / rows["picture"][0]).size == (3 * 64, 64)  # photograph | masks | attention
    assert len(list((out / "masks").glob("*_EX.png"))) == 2
    # Messidor as a test-only set, scored by the stage-2 model (referable / normal AUC)
    ev = tmp_path / "messidor"
    assert (
        main(
            [
                "test",
                "--config",
                str(conf / "messidor_eval.yaml"),
                f"--data.root={messidor_root}",
                f"--ckpt_path={joint_ckpt}",
                f"--trainer.default_root_dir={ev}",
                f"--trainer.logger.init_args.save_dir={ev}",
                "--trainer.accelerator=cpu",
                "--trainer.enable_progress_bar=false",
                "--data.image_size=64",
                "--data.num_workers=0",
                "--data.batch_size=2",
                "--model.generator_width=0.0625",
                "--model.discriminator_width=0.0625",
            ]
        )
        == 0
    )
    test = read_run_metrics(next(ev.glob("logs/version_*")))
    assert {"test/referable_auc", "test/normal_auc", "test/referable_acc"} <= set(test.columns)


def test_smoke_grading_datamodule_runs_the_grading_stage(eyepacs_root, tmp_path):
    """Smoke test: a GradingDataModule's batches go through the grading stage's fit and validation
    without an error (what the stage computes: tests/learning/test_learning.py and the CLI tests)."""
    dm = GradingDataModule(
        "eyepacs",
        str(eyepacs_root),
        image_size=64,
        val_size=2,
        batch_size=2,
        num_workers=0,
        augment=False,
        split_file=str(tmp_path / "s.json"),
    )
    task = CollaborativeTask(stage="grading", **TINY)
    trainer = pl.Trainer(
        fast_dev_run=1,
        accelerator="cpu",
        logger=False,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, dm)
    trainer.validate(task, dm)


def test_the_one_command_script_hands_each_stages_best_checkpoint_to_the_next(tmp_path):
    """conf/collaborative/run_idrid.sh with a stand-in `retinalab` that records its arguments and writes
    the checkpoints a fit would (the stages themselves: test_both_stages_fit_from_the_cli..., and the
    script with real fits: test_one_command_runs_both_stages, `make test-slow`): stage 2 gets the newest
    best checkpoint of stage 1a and of stage 1b (the newest last.ckpt of a stage that kept none), the
    per-stage arguments go to their stage only, and the last line printed is stage 2's checkpoint."""
    import os
    import subprocess

    fake = tmp_path / "fake_retinalab"
    fake.write_text("""#!/bin/bash
# usage like `retinalab fit ...`: log the arguments, write two runs' checkpoints (version 1 the newer)
printf '%s\\n' "$*" >> "$CALLS"
while [ $# -gt 0 ]; do [ "$1" = --trainer.default_root_dir ] && root=$2; shift; done
v0=$root/logs/version_0/checkpoints v1=$root/logs/version_1/checkpoints
mkdir -p "$v0" "$v1"
case "$root" in
  *stage1_grading) touch -d 2020-01-01 "$v0/last.ckpt"; touch -d 2020-01-02 "$v1/last.ckpt" ;;  # no best checkpoint
  *) touch -d 2020-01-01 "$v0/best.ckpt" "$v0/last.ckpt"; touch -d 2020-01-02 "$v1/best.ckpt" "$v1/last.ckpt" ;;
esac
""")
    fake.chmod(0o755)
    env = {
        **os.environ,
        "RUNS": str(tmp_path / "runs"),
        "RETINALAB": str(fake),
        "CALLS": str(tmp_path / "calls.txt"),
        "STAGE1_SEG_ARGS": "--seg-only",
        "STAGE2_ARGS": "--data.image_level_val_size=1",
    }
    res = subprocess.run(
        ["bash", str(REPO / "conf" / "collaborative" / "run_idrid.sh"), "/data/IDRiD", "--every=1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    seg, grading, joint = (tmp_path / "calls.txt").read_text().splitlines()
    runs = tmp_path / "runs"
    assert "idrid_stage1_seg.yaml" in seg and "--seg-only" in seg and "--seg-only" not in grading + joint
    assert "idrid_stage1_grading.yaml" in grading and "idrid_stage2.yaml" in joint
    assert all("--data.root /data/IDRiD" in c and "--every=1" in c for c in (seg, grading, joint))
    assert f"--model.generator_ckpt {runs}/stage1_seg/logs/version_1/checkpoints/best.ckpt" in joint  # the newest best
    assert (
        f"--model.grader_ckpt {runs}/stage1_grading/logs/version_1/checkpoints/last.ckpt" in joint
    )  # no best: the newest last
    assert "--data.image_level_root /data/IDRiD" in joint and "--data.image_level_val_size=1" in joint
    assert res.stdout.strip().splitlines()[-1] == f"{runs}/stage2/logs/version_1/checkpoints/best.ckpt"


@pytest.mark.slow
def test_one_command_runs_both_stages(idrid_root, tmp_path):
    """conf/collaborative/run_idrid.sh hands each stage's checkpoint to the next (real fits; `make test-slow`)."""
    import os
    import subprocess
    import sys

    tiny = [
        "--trainer.max_epochs=1",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.log_every_n_steps=1",
        "--data.image_size=64",
        "--data.num_workers=0",
        "--data.batch_size=2",
        "--model.generator_width=0.0625",
        "--model.discriminator_width=0.0625",
        "--data.val_size=1",
    ]
    env = {
        **os.environ,
        "RUNS": str(tmp_path / "runs"),
        "RETINALAB": f"{sys.executable} -m retinalab",
        "WANDB_MODE": "offline",
        "STAGE2_ARGS": "--data.image_level_val_size=1",
    }
    res = subprocess.run(
        ["bash", str(REPO / "conf" / "collaborative" / "run_idrid.sh"), str(idrid_root), *tiny],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    final = Path(res.stdout.strip().splitlines()[-1])
    assert final.is_file() and final.parts[-5] == "stage2"
    hp = torch.load(final, weights_only=False)["hyper_parameters"]
    assert "stage1_seg" in hp["generator_ckpt"] and "stage1_grading" in hp["grader_ckpt"]


@pytest.mark.parametrize(
    "overlay", sorted(p.name for p in (REPO / "conf" / "collaborative" / "overlays").glob("*.yaml"))
)
def test_overlays_merge_with_the_stage_configs(overlay, tmp_path):
    from retinalab.lightning.cli import cli

    stages = (
        ["idrid_stage2.yaml"]
        if overlay != "cpu_small.yaml"
        else ["idrid_stage1_seg.yaml", "idrid_stage1_grading.yaml", "idrid_stage2.yaml"]
    )
    for stage in stages:
        c = cli(
            [
                "--config",
                str(REPO / "conf" / "collaborative" / stage),
                "--config",
                str(REPO / "conf" / "collaborative" / "overlays" / overlay),
                "--data.root",
                str(tmp_path),
                "--trainer.logger",
                "false",
            ],
            run=False,
        )
        h = c.model.hparams
        if overlay == "lesion_pretrained.yaml":
            assert not h.semi and not h.adversarial and c.model.discriminator is None and not c.model.update_generator
        if overlay == "lesion_semi.yaml":
            assert h.semi and not h.adversarial and c.model.update_generator
        if overlay == "oracle.yaml":
            assert h.semi and not h.adversarial and h.pseudo_source == "truth" and h.pseudo_warmup_steps == 0
            assert c.datamodule.image_level_truth == "all"
        if overlay.startswith("budget_"):  # the stage-2 budget and the attention warm-up scaled alike
            k = int(overlay.removeprefix("budget_").removesuffix("x.yaml"))
            assert (c.trainer.max_epochs, h.pseudo_warmup_steps) == (50 * k, 200 * k) and h.semi and h.adversarial
        if overlay == "ce1.yaml":
            assert h.generator_block == "conv"
        if overlay == "cpu_small.yaml":
            assert c.datamodule.image_size == 128 and h.generator_width == 0.125 and c.trainer.max_epochs == 10


# slow tier (make test-slow; CI runs it after make test): ~40 s
@pytest.mark.slow
def test_joint_stage_fits_under_ddp_on_two_cpu_processes(idrid_root, tmp_path):
    """Three manually stepped optimisers (G, grader, D) under Lightning's DDP (gloo); a subprocess
    because `ddp` re-launches the command for the second rank."""
    import os
    import subprocess
    import sys

    args = [
        "fit",
        "--config",
        str(REPO / "conf/collaborative/idrid_stage2.yaml"),
        f"--data.root={idrid_root}",
        f"--data.image_level_root={idrid_root}",
        "--data.val_size=1",
        "--data.image_level_val_size=1",
        "--data.image_size=64",
        "--data.num_workers=0",
        "--data.batch_size=2",
        "--model.generator_width=0.0625",
        "--model.discriminator_width=0.0625",
        "--trainer.max_epochs=1",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp_find_unused_parameters_true",
        "--trainer.enable_progress_bar=false",
        "--trainer.log_every_n_steps=1",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    res = subprocess.run(
        [sys.executable, "-m", "retinalab", *args],
        cwd=tmp_path,
        env={**os.environ, "WANDB_MODE": "offline"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    from retinalab.lightning.loggers import read_run_metrics

    (run,) = tmp_path.glob("logs/version_*")  # rank 1 logs nowhere: one W&B run, rank 0's
    metrics = read_run_metrics(run)
    assert metrics["val/acc"].notna().any() and metrics["train/loss_d"].notna().any()


def test_balanced_sampler_draws_every_grade_equally_often(eyepacs_root, tmp_path):
    from collections import Counter

    dm = GradingDataModule(
        "eyepacs",
        str(eyepacs_root),
        image_size=32,
        val_size=2,
        batch_size=4,
        num_workers=0,
        augment=False,
        split_file=str(tmp_path / "s.json"),
        sampler="balanced",
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    labels = [r.grade for r in loader.dataset.records]
    weights = loader.sampler.weights.tolist()
    per_grade = Counter()
    for y, w in zip(labels, weights, strict=True):
        per_grade[y] += w
    assert len(set(labels)) > 1 and all(
        v == pytest.approx(1.0) for v in per_grade.values()
    )  # each grade's total weight is 1
    assert len(loader.sampler) == len(labels)


def test_batch_norm_recalibration_uses_the_current_weights_and_restores_momentum(eyepacs_root, tmp_path):
    """RecalibrateBatchNorm replaces stale running statistics by the average over training batches of
    the current weights, touching only the stage's networks, and leaves momentum and eval mode as they were."""
    from retinalab.lightning import RecalibrateBatchNorm

    dm = GradingDataModule(
        "eyepacs",
        str(eyepacs_root),
        image_size=32,
        val_size=2,
        batch_size=4,
        num_workers=0,
        augment=False,
        split_file=str(tmp_path / "s.json"),
    )
    dm.setup("fit")
    task = CollaborativeTask(stage="grading", **TINY)
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.strategy.connect(task)
    trainer.datamodule = dm  # what Trainer.fit/test attach
    bn = task.grader.low[1]
    bn.running_mean.fill_(123.0)
    g_bn = next(m for m in task.generator.modules() if isinstance(m, torch.nn.BatchNorm2d))
    g_before = g_bn.running_mean.clone()
    task.eval()
    used = RecalibrateBatchNorm(batches=2).recalibrate(trainer, task)
    assert used == 2 and bn.momentum == 0.1 and not task.training and not bn.training
    assert bn.running_mean.abs().max() < 50  # re-estimated from images in [0, 1], not the stale 123
    assert torch.equal(g_bn.running_mean, g_before)  # G is not this stage's network


def test_imagenet_normalisation_goes_with_pretrained_weights(tmp_path):
    import timm

    from retinalab.models.lesion_attention import LesionAttentionGrader

    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict(), path)
    assert LesionAttentionGrader(5, 4, "resnet18", pretrained_path=str(path)).input_norm == "imagenet"
    assert LesionAttentionGrader(5, 4, "resnet18").input_norm == "none"
    g = LesionAttentionGrader(5, 4, "resnet18", attention=False, input_norm="imagenet").eval()
    x = torch.rand(1, 3, 32, 32)
    ref = LesionAttentionGrader(5, 4, "resnet18", attention=False, input_norm="none").eval()
    ref.load_state_dict(g.state_dict())
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    assert torch.allclose(g(x)["logits"], ref((x - mean) / std)["logits"], atol=1e-5)
    with pytest.raises(ValueError, match="input_norm"):
        LesionAttentionGrader(5, 4, "resnet18", input_norm="zscore")


def _fixed_batches(batch: dict, n: int) -> torch.utils.data.DataLoader:
    """A loader that yields the same joint batch ``n`` times (no collation)."""
    return torch.utils.data.DataLoader([batch] * n, batch_size=None)


def _fit_fixed(batch: dict, n: int, **kw) -> tuple[CollaborativeTask, pl.Trainer]:
    torch.manual_seed(0)
    task = CollaborativeTask(stage="joint", **kw, **TINY)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    trainer.fit(task, train_dataloaders=_fixed_batches(batch, n))
    return task, trainer


def test_joint_gradient_accumulation_steps_every_k_batches_with_the_same_gradient():
    """accumulate_grad_batches=2 on the same batch twice takes exactly the step that one batch takes
    with k=1 (the mean of two equal gradients); global_step counts every optimiser's step, once per k
    batches (optimizer_steps_per_batch). With D, G's adversarial term sees D as last stepped, so only
    the grader and D are compared there (with k=1 G sees D after this batch's step)."""
    g = torch.Generator().manual_seed(0)
    batch = {
        "pixel": {
            "image": torch.rand(2, 3, 64, 64, generator=g),
            "mask": (torch.rand(2, 4, 64, 64, generator=g) > 0.9).float(),
        },
        "image": {"image": torch.rand(2, 3, 64, 64, generator=g), "label": torch.tensor([0, 3])},
    }
    for variant, compared, steps_per_batch in (
        (dict(adversarial=False), ("generator", "grader"), 2),
        (dict(), ("grader", "discriminator"), 3),
    ):
        params = {}
        for k, n in ((1, 1), (2, 2), (2, 4)):
            task, trainer = _fit_fixed(batch, n, accumulate_grad_batches=k, **variant)
            assert task.optimizer_steps_per_batch == steps_per_batch
            assert trainer.global_step == n // k * steps_per_batch
            params[(k, n)] = {
                name: p.detach().clone() for name, p in task.named_parameters() if name.startswith(compared)
            }
        one, accumulated, two_steps = params[(1, 1)], params[(2, 2)], params[(2, 4)]
        assert {name.split(".")[0] for name in one} == set(compared)
        for name in one:
            assert torch.allclose(one[name], accumulated[name], rtol=1e-5, atol=1e-6), (variant, name)
        assert any(not torch.allclose(one[n], two_steps[n]) for n in one)  # a second accumulated step moves them on
    with pytest.raises(ValueError, match="accumulate_grad_batches must be >= 1"):
        CollaborativeTask(stage="joint", accumulate_grad_batches=0, **TINY)
    with pytest.raises(ValueError, match="trainer.accumulate_grad_batches"):
        CollaborativeTask(stage="segmentation", accumulate_grad_batches=2, **TINY)


def test_optimizer_steps_per_batch_follows_the_variant():
    assert CollaborativeTask(stage="grading", **TINY).optimizer_steps_per_batch == 1
    assert CollaborativeTask(stage="joint", adversarial=False, **TINY).optimizer_steps_per_batch == 2
    assert (
        CollaborativeTask(
            stage="joint", semi=False, adversarial=False, lesion_features="masks", **TINY
        ).optimizer_steps_per_batch
        == 1
    )
