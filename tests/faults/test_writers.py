"""Two writers on one run folder (issue 48): ``fit``, ``active``, a study cell and a sweep each take the
folder's lock before they write; a second writer ends in one line naming the holder, with every file an
earlier run left byte for byte as it was; a killed holder's lock is taken over with a warning."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import yaml

from retinalab.utils.runs import RunBusyError, run_lock
from tests.helpers.cli import TINY, run
from tests.helpers.faults import active_argv, errors, held_by_another_process, snapshot, start, tiny_fit


@pytest.mark.slow
def test_two_active_runs_started_at_once_on_one_folder_one_is_refused_and_nothing_is_mixed(synth_eophtha, tmp_path):
    """The issue's first row: seed 0 EGL and seed 1 random on the same out_dir at once. One runs; the other
    ends in one line naming it (or, when it starts after the first finished, saying the folder holds a
    run); the folder describes the run that ran, in every file."""
    # the patch cache first, so that both start their loops within a second of each other
    run(active_argv(synth_eophtha, tmp_path / "warm", "--max_rounds=0"), tmp_path)
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
    assert not (tmp_path / "run").exists()  # the lock file goes as the run ends, and the folder it made, empty
    # what `kill -9` leaves: the file, naming a process that no longer runs, and no lock held on it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").write_text(f"retinalab active (pid {dead.stdout.strip()})")
    with caplog.at_level(logging.WARNING, logger="retinalab.utils.runs"):
        with run_lock(tmp_path / "run", "retinalab active"):
            pass
    assert f"taking over the lock left by retinalab active (pid {dead.stdout.strip()})" in caplog.text


def test_a_study_cell_another_process_runs_is_refused_naming_it(earlier_fit, tmp_path, capsys):
    """Two writers on one study cell (its `--cell I` started twice, or a study run twice at once)."""
    from retinalab.cli import main

    syn, runs = earlier_fit
    cfg = tmp_path / "study.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "out_dir": str(tmp_path / "study"),
                "methods": {"convnet": str(TINY)},
                "labelled": [2],
                "seeds": [0],
                "overrides": [
                    f"--data.root={syn}",
                    f"--data.cache_dir={runs.parent / 'cache'}",
                    "--trainer.enable_progress_bar=false",
                ],
            }
        )
    )
    cell = tmp_path / "study" / "cells" / "convnet" / "n2_s0"
    with held_by_another_process(cell, "retinalab study tiny (cell convnet/n2_s0)") as pid:
        code = main(["study", "--config", str(cfg), "--cell", "0"])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert errors(err) == [
        f"error: {cell} is in use by retinalab study tiny (cell convnet/n2_s0) (pid {pid}); wait for it to finish, "
        f"stop it, or write to another folder (it holds {cell.resolve() / '.lock'})."
    ]
    assert not (cell / "cell.json").exists()


def test_a_sweep_on_a_folder_another_sweep_runs_is_refused_before_any_run(tmp_path, capsys):
    """Two sweeps on one output folder: the second's runs were refused one by one (their folders were held)
    and its sweep_runs.csv written over the first's. The sweep now holds its folder: one line, nothing run."""
    from retinalab.cli import main

    sweep = tmp_path / "lr.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "method": "grid",
                "parameters": {"model.lr": {"values": [0.1, 0.01]}},
                "command": ["${interpreter}", "-c", "import sys; sys.exit(0)", "${args}"],
            }
        )
    )
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep_runs.csv").write_text("run,model.lr,status\n0,0.1,ok\n")
    before = snapshot(out)
    with held_by_another_process(out, f"retinalab sweep {sweep}") as pid:
        assert main(["sweep", str(sweep), "--out", str(out)]) == 2
    (line,) = errors(capsys.readouterr().err)
    assert f"is in use by retinalab sweep {sweep} (pid {pid})" in line
    assert snapshot(out) == before
