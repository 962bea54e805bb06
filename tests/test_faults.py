"""Faults that must lose nothing and end in one line (issue 48): two writers on one run folder, a refused run
on an earlier run's folder, a lock left by a killed process.

Each case runs the command as a user would (its own process, or :func:`retinalab.cli.main`), and checks
the exit code, the one line, and that every file an earlier run left is byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from retinalab.utils.runs import RunBusyError, run_lock
from tests.helpers.cli import TINY
from tests.helpers.paths import REPO


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and its hash."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def active_argv(root: Path, work: Path, *extra: str) -> list[str]:
    """A ``retinalab active`` run small enough for a test (2 rounds of a tiny LeNet on 128 px photographs)."""
    return [
        "active",
        "--config",
        str(REPO / "conf" / "active" / "eophtha_egl.yaml"),
        f"--root={root}",
        f"--out_dir={work / 'al'}",
        f"--cache_dir={work / 'cache'}",
        "--logger=null",
        "--progress=false",
        "--patches.image_size=128",
        "--patches.patch_size=16",
        "--patches.grid_stride=16",
        "--patches.view_size=128",
        "--patches.exudate_per_image=12",
        "--patches.healthy_per_image=12",
        "--conv_channels=[4, 8]",
        "--hidden=16",
        "--batch_size=8",
        "--initial_batches=2",
        "--initial_images=2",
        "--k=6",
        "--max_rounds=2",
        "--val_size=0.25",
        "--test_size=0.25",
        "--accelerator=cpu",
        "--plot_every=0",
        *extra,
    ]


def start(argv: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "RETINALAB_CACHE": str(cwd / "cache")}
    return subprocess.Popen(
        [sys.executable, "-m", "retinalab", *argv], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@contextmanager
def held_by_another_process(folder: Path, holder: str) -> Iterator[int]:
    """``folder``'s run lock held by another process (as a running command holds it); its pid."""
    code = (
        "import sys; from retinalab.utils.runs import run_lock\n"
        f"with run_lock({str(folder)!r}, {holder!r}):\n"
        "    print('held', flush=True); sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc.pid
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


@pytest.mark.slow
def test_two_active_runs_started_at_once_on_one_folder_one_is_refused_and_nothing_is_mixed(synth_eophtha, tmp_path):
    """The issue's first row: seed 0 EGL and seed 1 random on the same out_dir at once. One runs; the other
    ends in one line naming it (or, when it starts after the first finished, saying the folder holds a
    run); the folder describes the run that ran, in every file."""
    # the patch cache first, so that both start their loops within a second of each other
    warm = subprocess.run(
        [sys.executable, "-m", "retinalab", *active_argv(synth_eophtha, tmp_path / "warm", "--max_rounds=0")],
        cwd=tmp_path,
        env={**os.environ, "WANDB_MODE": "offline"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert warm.returncode == 0, warm.stderr[-3000:]
    work = tmp_path / "warm"
    (work / "al").rename(tmp_path / "warm-run")
    procs = [
        start(active_argv(synth_eophtha, work, "--seed=0", "--acquisition=egl"), tmp_path),
        start(active_argv(synth_eophtha, work, "--seed=1", "--acquisition=random"), tmp_path),
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[1].decode()[-2000:] for o in outs]
    refused = next(o[1].decode() for p, o in zip(procs, outs, strict=True) if p.returncode == 2)
    (line,) = errors(refused)
    assert "in use by retinalab active (pid" in line or "already holds an active-learning run" in line, line
    state = json.loads((work / "al" / "state.json").read_text())
    config = yaml.safe_load((work / "al" / "config.yaml").read_text())
    manifest = json.loads((work / "al" / "manifest.json").read_text())
    ran = state["config"]
    assert (config["seed"], config["acquisition"]) == (ran["seed"], ran["acquisition"])
    assert manifest["config"]["seed"] == ran["seed"] and manifest["config"]["acquisition"] == ran["acquisition"]
    assert state["stopped"] and not (work / "al" / ".lock").exists()  # the lock goes with the run


def test_an_active_run_on_a_folder_another_process_writes_is_refused_before_writing(synth_eophtha, tmp_path, capsys):
    from retinalab.cli import main

    (tmp_path / "al").mkdir()
    (tmp_path / "al" / "state.json").write_text('{"an earlier": "state"}')
    before = snapshot(tmp_path / "al")
    with held_by_another_process(tmp_path / "al", "retinalab label") as pid:
        assert main(active_argv(synth_eophtha, tmp_path, "--resume")) == 2
        (line,) = errors(capsys.readouterr().err)
        assert f"in use by retinalab label (pid {pid})" in line
        assert {k: v for k, v in snapshot(tmp_path / "al").items() if k != ".lock"} == before


def tiny_fit(root: Path, runs: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        str(TINY),
        f"--data.root={root}",
        f"--data.cache_dir={runs.parent / 'cache'}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={runs}",
        *extra,
    ]


@pytest.fixture(scope="module")
def earlier_fit(tmp_path_factory):
    """A synthetic IDRiD and a finished tiny fit whose run folder is ``runs`` (no logger: files at its top)."""
    from retinalab.cli import main
    from retinalab.synthetic import write_synthetic

    work = tmp_path_factory.mktemp("faults")
    syn = write_synthetic("idrid", work / "syn", 24, 5, (128, 96), workers=1)
    assert main(tiny_fit(syn, work / "runs")) == 0
    return syn, work / "runs"


def test_a_refused_fit_on_an_earlier_runs_folder_leaves_it_byte_for_byte(earlier_fit, capsys):
    """The issue's third row: a check that refuses the run (no labelled image) runs before split.json,
    config.yaml or manifest.json is written over the earlier run's."""
    from retinalab.cli import main

    syn, runs = earlier_fit
    before = snapshot(runs)
    assert {"split.json", "config.yaml", "manifest.json"} <= set(before)
    assert main(tiny_fit(syn, runs, "--data.num_labeled_images=0")) == 2
    assert errors(capsys.readouterr().err) == ["error: num_labeled_images=0: there is no labelled training image."]
    assert snapshot(runs) == before


def test_a_fit_on_a_folder_another_process_writes_is_refused_naming_it(earlier_fit, capsys):
    from retinalab.cli import main

    syn, runs = earlier_fit
    before = snapshot(runs)
    with held_by_another_process(runs, "retinalab fit") as pid:
        assert main(tiny_fit(syn, runs)) == 2
    (line,) = errors(capsys.readouterr().err)
    assert f"is in use by retinalab fit (pid {pid})" in line and str(runs) in line
    assert snapshot(runs) == before


def test_one_process_cannot_take_a_run_twice_and_a_killed_holders_lock_is_taken_over(tmp_path, caplog):
    with run_lock(tmp_path / "run", "retinalab active"):
        assert (tmp_path / "run" / ".lock").read_text() == f"retinalab active (pid {os.getpid()})"
        with pytest.raises(RunBusyError, match="in use by retinalab active"):
            with run_lock(tmp_path / "run", "retinalab label"):
                pass
    assert not (tmp_path / "run" / ".lock").exists()  # removed as the run ends
    # what `kill -9` leaves: the file, naming a process that no longer runs, and no lock held on it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "run" / ".lock").write_text(f"retinalab active (pid {dead.stdout.strip()})")
    with caplog.at_level(logging.WARNING, logger="retinalab.utils.runs"):
        with run_lock(tmp_path / "run", "retinalab active"):
            pass
    assert f"taking over the lock left by retinalab active (pid {dead.stdout.strip()})" in caplog.text
