"""A run killed with ``kill -9`` and resumed from ``last.ckpt`` ends where the uninterrupted run ends
(issue 21): the random state, the augmentation streams (tests/datamodules/test_transforms.py) and the epoch
schedulers' steps travel in the checkpoint, and the balanced sampler draws by epoch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from retinalab.datamodules.image_datasets import EpochWeightedSampler
from tests.helpers.fit_args import tiny_patch_fit
from tests.helpers.paths import REPO


# ---------------------------------------------------------------- the balanced sampler
def test_the_balanced_sampler_draws_by_epoch():
    """The draws are a function of (seed, epoch): a run resumed at epoch 3 draws epoch 3's."""
    w = torch.tensor(
        [1 / 3, 1 / 3, 1 / 3, 1 / 2, 1 / 2], dtype=torch.double
    )  # two classes of 3 and 2 images, 1/count weights

    def draws(seed: int, epoch: int) -> list[int]:
        s = EpochWeightedSampler(w, 4000, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert draws(0, 3) == draws(0, 3) and draws(0, 3) != draws(0, 2) and draws(1, 3) != draws(0, 3)
    counts = np.bincount(draws(0, 1), minlength=5)
    assert abs(counts[:3].sum() - 2000) < 150  # each class half the time (sd 32)


# ---------------------------------------------------------------- kill -9, then --ckpt_path last
#: the ConvNet runs one epoch more: its plateau scheduler has to act after the resume (val/loss improved in each of 3)
EPOCHS = {"ssl_gan": 3, "stage2": 3, "convnet": 4, "fixmatch": 3}


def _fit_args(kind: str, data: Path, out: Path) -> list[str]:
    common = [
        f"--trainer.max_epochs={EPOCHS[kind]}",
        "--trainer.logger=false",
        "--trainer.callbacks+=tests.helpers.ddp_helpers.KillAtEpochStart",
    ]
    if kind == "stage2":  # paper 001's joint stage, from scratch, on the fake IDRiD layout
        return [
            "fit",
            "--config",
            str(REPO / "conf/collaborative/idrid_stage2.yaml"),
            f"--data.root={data}",
            f"--data.image_level_root={data}",
            "--data.val_size=1",
            "--data.image_level_val_size=1",
            "--model.pseudo_warmup_steps=0",
            "--data.image_size=64",
            "--data.num_workers=0",
            "--data.batch_size=2",
            "--model.generator_width=0.0625",
            "--model.discriminator_width=0.0625",
            "--model.num_overlays=1",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={out}",
            *common,
        ]
    if kind == "ssl_gan":  # the learning-rate decay starts after epoch 1, so the resumed epochs decay it
        return tiny_patch_fit(
            "conf/ssl_gan/synthetic.yaml", data, out, "--model.gen_width=0.05", "--model.lr_decay_start=1", *common
        )
    if kind == "fixmatch":  # the strong views' stream, the EMA and p_model (distribution alignment) must resume too
        return tiny_patch_fit("conf/fixmatch/synthetic.yaml", data, out, *common)
    # the ConvNet with a plateau scheduler that halves the rate whenever val/loss does not improve:
    # Lightning steps it after writing the epoch's checkpoint, so the resumed run must step it again
    return tiny_patch_fit(
        "conf/convnet/synthetic.yaml",
        data,
        out,
        "--model.lr_plateau_patience=0",
        "--model.lr_plateau_factor=0.5",
        "--model.lr=0.01",
        *common,
    )


# slow tier (make test-slow; CI runs it after make test): three Lightning start-ups and fits each, ~45 s per kind
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ssl_gan", "convnet", "stage2", "fixmatch"])
def test_kill_9_then_resume_equals_the_uninterrupted_run(kind, tmp_path):
    """`retinalab fit` killed with SIGKILL as epoch 2 of 3 (4) starts, then run again with `--ckpt_path last`,
    ends with exactly the weights (the SSL-GAN's EMA weights and stored threshold included), optimiser
    and scheduler states and best score of an uninterrupted run with the same seed. Without the random
    state in `last.ckpt` every weight differed; without the replayed plateau step the ConvNet's did."""
    if kind == "stage2":
        from tests.data.idrid.data import make_idrid

        data = make_idrid(tmp_path / "IDRiD")
    else:
        from retinalab.synthetic import write_synthetic

        data = write_synthetic("idrid", tmp_path / "syn", 24, 3, (128, 96), workers=1)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RETINALAB_CACHE": str(tmp_path / "cache")}

    def fit(out: Path, kill_epoch: int, *extra: str) -> subprocess.CompletedProcess:
        out.mkdir(exist_ok=True)
        return subprocess.run(
            [sys.executable, "-m", "retinalab", *_fit_args(kind, data, out), *extra],
            cwd=out,
            capture_output=True,
            text=True,
            env={**env, "RETINALAB_TEST_KILL_EPOCH": str(kill_epoch)},
            timeout=600,
        )

    res = fit(tmp_path / "ref", 99)
    assert res.returncode == 0, res.stderr[-3000:]
    res = fit(tmp_path / "run", 2)
    assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
    (last,) = (tmp_path / "run").rglob("last.ckpt")
    assert torch.load(last, weights_only=True)["epoch"] == 1  # readable without running pickled code
    res = fit(tmp_path / "run", 99, "--ckpt_path", "last")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (
        "Restoring states from the checkpoint path" in res.stderr + res.stdout and "resumed at epoch" not in res.stderr
    )

    (ref,) = (tmp_path / "ref").rglob("last.ckpt")
    a, b = torch.load(ref, weights_only=False), torch.load(last, weights_only=False)
    assert a["epoch"] == b["epoch"] == EPOCHS[kind] - 1 and a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    differ = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not differ, f"{len(differ)} of {len(a['state_dict'])} tensors differ, e.g. {differ[:3]}"
    if kind == "ssl_gan":
        assert any(k.startswith("ema.") for k in a["state_dict"]) and "image_threshold" in a["state_dict"]
        assert a["lr_schedulers"][0]["_last_lr"][0] < 3e-4  # the resumed epochs did decay the rate
    if kind == "convnet":
        assert (
            a["lr_schedulers"][0]["_last_lr"][0] < 0.01
        )  # the plateau scheduler did act (halved from --model.lr=0.01)
    assert a["lr_schedulers"] == b["lr_schedulers"]
    for oa, ob in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for k, s in oa["state"].items():
            assert all(torch.equal(s[n], ob["state"][k][n]) for n in s)
    best = [k for k in a["callbacks"] if k.startswith("ModelCheckpoint")]
    assert [a["callbacks"][k]["best_model_score"] for k in best] == [
        b["callbacks"][k]["best_model_score"] for k in best
    ]
