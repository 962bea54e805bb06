"""Corrupt and foreign checkpoints get a clear error naming the file and the mismatch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from retinalab.checkpoints import CheckpointError, check_checkpoint, read_checkpoint
from retinalab.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "conf" / "convnet_tiny.yaml"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A fitted tiny ConvNet's checkpoint and the synthetic data it was trained on."""
    from retinalab.lightning.cli import cli
    from retinalab.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("ckpt")
    write_synthetic("idrid", root / "syn", 24, 7, (128, 96), workers=1)
    c = cli(
        [
            "--config",
            str(TINY),
            f"--data.root={root / 'syn'}",
            f"--data.cache_dir={root / 'cache'}",
            "--trainer.logger=false",
            "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={root}",
        ],
        run=False,
    )
    c.trainer.fit(c.model, c.datamodule)
    path = root / "model.ckpt"
    c.trainer.save_checkpoint(path)
    return root, path


def test_checkpoints_are_written_beside_the_target_and_renamed(fitted, tmp_path, monkeypatch):
    """retinalab's trainers write with AtomicCheckpointIO: a temporary file in the target's folder
    (not the system's temporary folder, which on a cluster is often another file system, where
    Lightning's move is a copy that a kill can cut short), renamed over the target; a stray left by an
    earlier killed write is removed by the next one."""
    import tempfile

    from retinalab.checkpoints import AtomicCheckpointIO

    _, path = fitted
    ckpt = torch.load(path, weights_only=True)
    target = tmp_path / "ckpts" / "last.ckpt"
    (tmp_path / "ckpts").mkdir()
    stray = tmp_path / "ckpts" / ".last.ckpt.999999.tmp"
    stray.write_bytes(b"half a checkpoint")
    monkeypatch.setattr(tempfile, "mkstemp", lambda *a, **k: pytest.fail("wrote through the system's temporary folder"))
    AtomicCheckpointIO().save_checkpoint(ckpt, target)
    assert torch.load(target, weights_only=True)["state_dict"].keys() == ckpt["state_dict"].keys()
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def test_retinalab_trainers_use_the_atomic_writer(tmp_path):
    from retinalab.checkpoints import AtomicCheckpointIO
    from retinalab.lightning.cli import cli

    c = cli(["--config", str(TINY), f"--data.root={tmp_path}", "--trainer.logger=false"], run=False)
    assert type(c.trainer.strategy.checkpoint_io) is AtomicCheckpointIO


def _test_args(root: Path, ckpt: Path, *extra: str) -> list[str]:
    return [
        "test",
        "--config",
        str(TINY),
        f"--data.root={root / 'syn'}",
        f"--data.cache_dir={root / 'cache'}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={root}",
        f"--ckpt_path={ckpt}",
        *extra,
    ]


def test_a_good_checkpoint_reads_without_running_pickled_code(fitted):
    _, path = fitted
    ckpt = read_checkpoint(path)
    assert "state_dict" in ckpt and ckpt["epoch"] == 1  # saved after the one epoch


def test_a_truncated_checkpoint_is_named(fitted, tmp_path, capsys):
    root, path = fitted
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.ckpt: not a readable checkpoint .*truncated"):
        read_checkpoint(cut)
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.ckpt: the checkpoint is empty"):
        read_checkpoint(tmp_path / "empty.ckpt")
    assert main(_test_args(root, cut)) == 2
    err = capsys.readouterr().err
    assert "cut.ckpt: not a readable checkpoint" in err and "Traceback" not in err


def test_a_checkpoint_of_another_task_is_named(fitted, tmp_path, capsys):
    root, path = fitted
    ckpt = torch.load(path, weights_only=False)
    ckpt["hyper_parameters"] = {"stage": "joint", "lam": 10.0, "generator_width": 0.5}  # paper 001's task
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    assert main(_test_args(root, other)) == 2
    err = capsys.readouterr().err
    assert "other.ckpt: its hyper-parameters do not fit this config's model" in err and "Traceback" not in err


def test_weights_of_another_shape_or_task_are_named(fitted):
    """check_checkpoint, for checkpoints without hyper-parameters (Lightning builds the model from a
    checkpoint's hyper-parameters when it has them, so a --model.width that differs is overridden)."""
    from retinalab.models.lenet import LeNet
    from retinalab.tasks import PatchClassifierTask

    _, path = fitted
    with pytest.raises(CheckpointError, match=r"model.ckpt: .* of another shape .*'width': 0.1"):
        check_checkpoint(path, PatchClassifierTask(width=0.2))
    check_checkpoint(path, PatchClassifierTask(width=0.1))

    class Other(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lenet = LeNet()

    with pytest.raises(CheckpointError, match="a checkpoint of another task"):
        check_checkpoint(path, Other())


def test_a_stage_1_checkpoint_of_another_width_is_named(tmp_path):
    from retinalab.tasks import CollaborativeTask

    seg = CollaborativeTask(stage="segmentation", generator_width=0.0625, discriminator_width=0.0625, num_overlays=0)
    torch.save({"state_dict": seg.state_dict()}, tmp_path / "seg.ckpt")
    with pytest.raises(ValueError, match=r"seg.ckpt: \d+ 'generator' weight\(s\) of another shape"):
        CollaborativeTask(
            stage="joint", generator_ckpt=str(tmp_path / "seg.ckpt"), generator_width=0.125, discriminator_width=0.0625
        )
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "seg.ckpt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cut.ckpt: not a readable checkpoint"):
        CollaborativeTask(
            stage="joint", generator_ckpt=str(tmp_path / "cut.ckpt"), generator_width=0.0625, discriminator_width=0.0625
        )
