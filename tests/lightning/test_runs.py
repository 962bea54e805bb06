"""Provenance and clusters: manifest.json, same seed -> same metrics, SLURM detection and the sbatch script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from retinalab.cli import main
from retinalab.lightning.cli import cli
from tests.helpers.fit_args import tiny_patch_fit
from tests.helpers.paths import REPO

TINY = REPO / "tests" / "conf" / "convnet_tiny.yaml"
SLURM = {
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_NNODES": "1",
    "SLURM_JOB_ID": "4242",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_JOB_NAME": "retinalab",
    "SLURM_NODELIST": "node001",
}


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    from retinalab.synthetic import write_synthetic

    return write_synthetic("idrid", tmp_path_factory.mktemp("runs") / "syn", 24, 5, (128, 96), 1.0, 1.0, 1)


def _fit(syn, out: Path, *extra: str) -> Path:
    assert (
        main(
            [
                "fit",
                "--config",
                str(TINY),
                f"--data.root={syn}",
                "--trainer.enable_progress_bar=false",
                "--trainer.max_epochs=2",
                f"--trainer.default_root_dir={out}",
                f"--trainer.logger.init_args.save_dir={out}",
                f"--data.cache_dir={out.parent / 'cache'}",
                f"--data.split_file={out / 'split.json'}",
                *extra,
            ]
        )
        == 0
    )
    return next(out.glob("logs/version_*"))


def test_same_config_and_seed_give_the_same_metrics_and_a_manifest(syn, tmp_path):
    a, b = _fit(syn, tmp_path / "a"), _fit(syn, tmp_path / "b")
    ma, mb = pd.read_csv(a / "metrics.csv"), pd.read_csv(b / "metrics.csv")
    cols = [c for c in ma.columns if c.startswith("val/")]
    assert cols and ma[cols].equals(mb[cols])
    m = json.loads((a / "manifest.json").read_text())
    split = json.loads((tmp_path / "a" / "split.json").read_text())
    assert m["seed"] == 0 and m["split_hash"] == split["hash"] and m["stage"] == "fit"
    assert (
        m["packages"]["torch"]
        and m["packages"]["pytorch-lightning"]
        and m["config"]["model"]["init_args"]["width"] == 0.1
    )
    assert m["git_commit"] is None or len(m["git_commit"].split("+")[0]) == 40
    # another seed changes the split and the result
    c = _fit(syn, tmp_path / "c", "--seed_everything=1", "--data.seed=1")
    assert json.loads((c / "manifest.json").read_text())["split_hash"] != m["split_hash"]


def test_slurm_is_detected_with_requeue(monkeypatch, tmp_path):
    from lightning_fabric.plugins.environments import SLURMEnvironment

    for k, v in SLURM.items():
        monkeypatch.setenv(k, v)
    c = cli(["--config", str(TINY), "--data.root", str(tmp_path), "--trainer.logger", "false"], run=False)
    env = c.trainer._accelerator_connector.cluster_environment
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue and env.job_id() == 4242
    monkeypatch.setenv(
        "SLURM_JOB_NAME", "bash"
    )  # an interactive allocation: Lightning must not treat it as a batch job
    c = cli(["--config", str(TINY), "--data.root", str(tmp_path), "--trainer.logger", "false"], run=False)
    assert not isinstance(c.trainer._accelerator_connector.cluster_environment, SLURMEnvironment)


def test_sbatch_script_passes_nodes_and_tasks_to_lightning(tmp_path):
    """Run docker/slurm/fit.sbatch with a stand-in `srun` and `--print_config`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nexec "$@"\n')
    (bin_dir / "srun").chmod(0o755)
    env = {
        **os.environ,
        **SLURM,
        "SLURM_NNODES": "2",
        "SLURM_NTASKS_PER_NODE": "4",
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RETINALAB": f"{sys.executable} -m retinalab",
    }
    res = subprocess.run(
        ["bash", str(REPO / "docker" / "slurm" / "fit.sbatch"), str(TINY), "--data.root", "x", "--print_config"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    import yaml

    trainer = yaml.safe_load(res.stdout)["trainer"]
    assert int(trainer["num_nodes"]) == 2 and int(trainer["devices"]) == 4
    assert (tmp_path / "runs" / "slurm").is_dir()
    # a requeued job (preempted, or requeued by Lightning) resumes from the newest last*.ckpt, unless told otherwise
    env["RETINALAB"] = "echo"

    def args(*extra: str, restarts: str) -> list[str]:
        res = subprocess.run(
            ["bash", str(REPO / "docker" / "slurm" / "fit.sbatch"), "c.yaml", *extra],
            cwd=tmp_path,
            env={**env, "SLURM_RESTART_COUNT": restarts},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        return res.stdout.split()

    assert "--ckpt_path" not in args(restarts="0")
    assert args(restarts="2")[-2:] == ["--ckpt_path", "last"]
    assert args("--ckpt_path", "x.ckpt", restarts="1")[-2:] == ["--ckpt_path", "x.ckpt"]
    assert args("--ckpt_path=x.ckpt", restarts="1")[-1] == "--ckpt_path=x.ckpt"


def test_dockerfile_takes_the_base_as_an_argument_and_caches_dependencies():
    text = (REPO / "docker" / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert lines[0].startswith("ARG BASE=") and lines[1] == "FROM ${BASE}"
    deps = next(i for i, ln in enumerate(lines) if "COPY pyproject.toml" in ln)
    src = next(i for i, ln in enumerate(lines) if ln.startswith("COPY retinalab"))
    assert deps < src  # the dependency layer does not depend on the source
    assert lines[-2] == 'ENTRYPOINT ["retinalab"]'


def test_kill_9_while_writing_last_keeps_the_previous_epoch_readable(tmp_path):
    """`retinalab fit` killed with SIGKILL halfway through writing `last.ckpt` at the end of epoch 3, on a
    run whose monitored metric cannot improve after epoch 0 (the learning rate is 0): `last.ckpt` is
    epoch 2's, whole and readable (the new one was being written beside it, AtomicCheckpointIO), and
    the monitored `best.ckpt` (epoch 0) is kept beside it. Before LatestCheckpoint, `last.ckpt` came
    from the monitored checkpoint's `save_last` and stayed at epoch 0. (That a run resumed from it
    continues where it stopped and ends exactly as an uninterrupted run: tests/lightning/test_resume.py.)"""
    import signal
    import subprocess
    import sys

    import torch

    from retinalab.synthetic import write_synthetic

    write_synthetic("idrid", tmp_path / "syn", 24, 3, (128, 96), workers=1)
    args = tiny_patch_fit(
        "conf/convnet/synthetic.yaml",
        tmp_path / "syn",
        tmp_path,
        "--data.num_labeled_images=null",
        "--data.batch_size=100",
        "--model.width=0.125",
        "--model.lr=0.0",
        "--trainer.max_epochs=6",
        "--trainer.logger=false",
        "--trainer.callbacks+=tests.helpers.ddp_helpers.KillWhileWritingLast",
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RETINALAB_CACHE": str(tmp_path / "cache"),
        "RETINALAB_TEST_KILL_WRITE_EPOCH": "3",
    }
    res = subprocess.run(
        [sys.executable, "-m", "retinalab", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
    ckpts = tmp_path / "runs" / "convnet_synthetic" / "checkpoints"
    (half,) = ckpts.glob(".last.ckpt.*.tmp")  # the write the kill cut short
    assert 0 < half.stat().st_size < (ckpts / "last.ckpt").stat().st_size
    last, best = torch.load(ckpts / "last.ckpt", weights_only=True), torch.load(ckpts / "best.ckpt", weights_only=True)
    assert last["epoch"] == 2 and best["epoch"] == 0  # saved at the end of epoch 2 / of epoch 0, the only improvement


def test_sigterm_mid_epoch_writes_the_moment_and_last_resumes_inside_that_epoch(tmp_path, caplog, monkeypatch):
    """A SIGTERM (a cluster's preemption notice) after batch 1 of epoch 1: Lightning stops after that
    batch and LatestCheckpoint writes `last-sigterm.ckpt` with every optimiser step taken so far;
    `--ckpt_path last` takes it (the newest), the run continues inside epoch 1 and ends with as many
    steps as an uninterrupted run; the end-of-epoch `last.ckpt` then replaces it."""
    import subprocess
    import sys

    import torch

    from retinalab.synthetic import write_synthetic

    write_synthetic("idrid", tmp_path / "syn", 24, 3, (128, 96), workers=1)
    args = tiny_patch_fit(
        "conf/convnet/synthetic.yaml",
        tmp_path / "syn",
        tmp_path,
        "--trainer.max_epochs=2",
        "--trainer.logger=false",
        "--trainer.callbacks+=tests.helpers.ddp_helpers.SigtermAtBatch",
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RETINALAB_CACHE": str(tmp_path / "cache"),
        "RETINALAB_TEST_SIGTERM_EPOCH": "1",
        "RETINALAB_TEST_SIGTERM_BATCH": "1",
    }
    res = subprocess.run(
        [sys.executable, "-m", "retinalab", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 143 and "SIGTERM: the state after" in res.stderr, res.stderr[
        -3000:
    ]  # 128 + SIGTERM, not 0
    ckpts = tmp_path / "runs" / "convnet_synthetic" / "checkpoints"
    last, moment = (
        torch.load(ckpts / "last.ckpt", weights_only=True),
        torch.load(ckpts / "last-sigterm.ckpt", weights_only=True),
    )
    per_epoch = last["global_step"]  # last.ckpt: the end of epoch 0
    assert last["epoch"] == 0 and moment["epoch"] == 1 and moment["global_step"] == per_epoch + 2 and per_epoch > 2
    monkeypatch.setenv("RETINALAB_TEST_SIGTERM_EPOCH", "-1")  # the resumed run, in this process
    monkeypatch.setenv("RETINALAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    caplog.set_level("INFO", logger="retinalab")
    assert main([*args, "--ckpt_path", "last"]) == 0
    assert f"--ckpt_path last: {ckpts / 'last-sigterm.ckpt'}" in caplog.text  # restored from it
    assert not (ckpts / "last-sigterm.ckpt").exists()
    end = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert end["epoch"] == 1 and end["global_step"] == 2 * per_epoch


def test_ckpt_path_last_finds_earlier_runs_and_the_slurm_checkpoint(syn, tmp_path, caplog):
    """A config whose checkpoints have no `dirpath` (most shipped ones) keeps each run's in its own
    `logs/version_<k>/checkpoints`; Lightning's `--ckpt_path last` looked only in the new, empty one and
    started from scratch. retinalab's takes the newest `last*.ckpt` of the earlier runs, or SLURM's
    `hpc_ckpt_<n>.ckpt` when that is newer."""
    import logging

    import torch

    out = tmp_path / "run"
    latest = "--trainer.callbacks+=retinalab.lightning.LatestCheckpoint"

    def fit(*extra: str) -> Path:  # the new run's folder
        _fit(syn, out, latest, *extra)
        return max(out.glob("logs/version_*"), key=lambda p: int(p.name.split("_")[1]))

    first = fit("--trainer.max_epochs=1")
    steps = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    caplog.set_level(logging.INFO, logger="retinalab")
    second = fit("--ckpt_path=last")  # 2 epochs
    assert second != first and f"--ckpt_path last: {first / 'checkpoints' / 'last.ckpt'}" in caplog.text
    ckpt = torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 2 * steps  # epoch 1 only: epoch 0 came from the first run
    # Lightning's SLURM checkpoint, written after the last epoch's last.ckpt, is the newest
    hpc = out / "hpc_ckpt_1.ckpt"
    hpc.write_bytes((second / "checkpoints" / "last.ckpt").read_bytes())
    caplog.clear()
    third = fit("--ckpt_path=last", "--trainer.max_epochs=3")
    assert f"--ckpt_path last: {hpc}" in caplog.text
    assert torch.load(third / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3 * steps


def test_a_resumed_fit_goes_on_in_its_run_folder_and_wandb_run(tmp_path, caplog):
    """`--ckpt_path` of a checkpoint that a run of the same config wrote (W&B logger, checkpoints without
    a `dirpath`, as in every shipped real-data config) goes on in that run: the same `version_<k>`
    folder, where the monitored `best.ckpt` keeps its best score (before, the resumed run wrote a new
    folder and saved its first epoch as `best.ckpt` whatever its score), and the same W&B run id. The
    offline history, read back, holds every epoch once, also after a resume that went back an epoch;
    `resume_in_place=false` starts a new folder and run."""
    import logging
    import shutil

    import torch

    from retinalab.lightning.loggers import read_run_metrics, run_piece_id
    from retinalab.synthetic import write_synthetic

    data = write_synthetic("idrid", tmp_path / "syn", 24, 3, (128, 96), workers=1)
    logs = tmp_path / "run" / "logs"

    def fit(epochs: int, *extra: str) -> None:
        # learning rate 0: val/image_auroc is the same in every epoch, so epoch 0 stays the best
        assert (
            main(
                tiny_patch_fit(
                    "conf/convnet/idrid.yaml",
                    data,
                    tmp_path,
                    "--model.lr=0.0",
                    f"--trainer.max_epochs={epochs}",
                    f"--trainer.logger.init_args.save_dir={tmp_path / 'run'}",
                    "--trainer.log_every_n_steps=1",
                    f"--data.cache_dir={tmp_path / 'cache'}",
                    *extra,
                )
            )
            == 0
        )

    fit(1)
    (run,) = logs.glob("version_*")
    ckpts = run / "checkpoints"
    shutil.copy(ckpts / "last.ckpt", ckpts / "epoch0.ckpt")
    first = torch.load(ckpts / "last.ckpt", weights_only=True)
    (state,) = [s for s in first["callbacks"].values() if "run" in s]
    run_id = state["run"]["wandb_id"]
    assert Path(state["run"]["dir"]) == run.resolve() and run_id
    caplog.set_level(logging.INFO, logger="retinalab")
    fit(3, "--ckpt_path=last")
    assert f"continuing the run in {run.resolve()}" in caplog.text
    assert list(logs.glob("version_*")) == [run]  # no new folder
    last, best = torch.load(ckpts / "last.ckpt", weights_only=True), torch.load(ckpts / "best.ckpt", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 3 * first["global_step"]
    assert best["epoch"] == 0  # tracked on from epoch 0's score; a new folder's best.ckpt would be epoch 1's
    m = json.loads((run / "manifest.json").read_text())
    assert m["ckpt_path"] == str(ckpts / "last.ckpt") and [e["ckpt_path"] for e in m["earlier"]] == [
        None
    ]  # each piece on record
    pieces = sorted(run.glob("wandb/offline-run-*"))
    assert len(pieces) == 2 and all(
        run_piece_id(p) == run_id for p in pieces
    )  # -<n> appended when both start in one second
    # back to the end of epoch 0 (epochs 1-2 trained again): the history keeps the new epochs 1-2 only
    fit(3, f"--ckpt_path={ckpts / 'epoch0.ckpt'}")
    history = read_run_metrics(run)
    val = history.dropna(subset=["val/image_auroc"])
    assert len(sorted(run.glob("wandb/offline-run-*"))) == 3 and val["epoch"].tolist() == [0, 1, 2]
    assert history["trainer/global_step"].is_monotonic_increasing
    fit(4, "--ckpt_path=last", "--trainer.logger.init_args.resume_in_place=false")
    assert len(list(logs.glob("version_*"))) == 2


def test_run_pieces_started_in_one_second_keep_their_id_and_order(tmp_path):
    """W&B names a piece that starts in the same second as the one before ``...-<id>-1``: the id comes
    from its ``run-<id>.wandb`` file, and the suffix orders it after the first piece (CI once read
    ``1`` as the run id)."""
    from retinalab.lightning.loggers import run_piece_id, run_piece_order

    names = [
        "offline-run-20261202_161706-648t14z9-1",
        "offline-run-20261202_161706-648t14z9",
        "offline-run-20261202_161705-zzz",
    ]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / f"run-{name.split('-')[3]}.wandb").touch()
    ordered = sorted((tmp_path / n for n in names), key=run_piece_order)
    assert [p.name for p in ordered] == [names[2], names[1], names[0]]
    assert [run_piece_id(p) for p in ordered] == ["zzz", "648t14z9", "648t14z9"]
    (tmp_path / "run-20261202_161707-abc-2").mkdir()  # no .wandb file yet: the name decides
    assert run_piece_id(tmp_path / "run-20261202_161707-abc-2") == "abc"


def test_an_online_run_logs_its_best_and_last_checkpoints_as_one_model_artifact(syn, tmp_path, monkeypatch, capsys):
    """retinalab's W&B logger logs checkpoints by default (log_model: true): a run that W&B treats as
    online (offline=False; W&B's own WANDB_MODE=offline keeps this test off the network, and the run
    file records what an online run would upload) logs best.ckpt (aliases best and latest, with the
    monitored metric and its score in the metadata) and last.ckpt as versions of model-<run id>. A run
    retinalab puts offline by itself logs none and says so on its sync line."""
    from retinalab.lightning.loggers.wandb_offline import iter_records

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = [
        "--trainer.logger=retinalab.lightning.loggers.WandbLogger",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'on'}",
        "--trainer.logger.init_args.offline=false",
    ]
    callbacks = [
        "--trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint",
        "--trainer.callbacks.monitor=val/image_auroc",
        "--trainer.callbacks.mode=max",
        "--trainer.callbacks.filename=best",
        "--trainer.callbacks+=retinalab.lightning.LatestCheckpoint",
    ]
    assert (
        main(
            [
                "fit",
                "--config",
                str(TINY),
                f"--data.root={syn}",
                "--trainer.enable_progress_bar=false",
                "--trainer.max_epochs=1",
                f"--trainer.default_root_dir={tmp_path / 'on'}",
                f"--data.cache_dir={tmp_path / 'cache'}",
                *logger,
                *callbacks,
            ]
        )
        == 0
    )
    (run_file,) = (tmp_path / "on").glob("logs/version_0/wandb/offline-run-*/run-*.wandb")
    artifacts = [r.artifact for r in iter_records(run_file) if r.WhichOneof("record_type") == "artifact"]
    assert {a.type for a in artifacts} == {"model"} and {a.name for a in artifacts} == {
        f"model-{run_file.stem.removeprefix('run-')}"
    }
    by_file = {json.loads(a.metadata)["original_filename"]: a for a in artifacts}
    assert set(by_file) == {"best.ckpt", "last.ckpt"}
    best = json.loads(by_file["best.ckpt"].metadata)
    assert (
        best["ModelCheckpoint"]["monitor"] == "val/image_auroc"
        and best["ModelCheckpoint"]["mode"] == "max"
        and 0 <= best["score"] <= 1
    )
    assert {"best", "latest"} <= set(by_file["best.ckpt"].aliases)
    # offline by retinalab's own choice (no API key): nothing logged, said once on the sync line
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    capsys.readouterr()
    assert (
        main(
            [
                "fit",
                "--config",
                str(TINY),
                f"--data.root={syn}",
                "--trainer.enable_progress_bar=false",
                "--trainer.max_epochs=1",
                f"--trainer.default_root_dir={tmp_path / 'off'}",
                f"--data.cache_dir={tmp_path / 'cache'}",
                "--trainer.logger=retinalab.lightning.loggers.WandbLogger",
                f"--trainer.logger.init_args.save_dir={tmp_path / 'off'}",
                *callbacks,
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.count("not uploaded as model artifacts offline") == 1
    (run_file,) = (tmp_path / "off").glob("logs/version_0/wandb/offline-run-*/run-*.wandb")
    assert not [r for r in iter_records(run_file) if r.WhichOneof("record_type") == "artifact"]
