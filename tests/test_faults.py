"""Faults that must lose nothing and end in one line (issue 48): two writers on one run folder, a refused run
on an earlier run's folder, a lock left by a killed process, a foreign checkpoint, a full disk (at the cache
build, at a checkpoint), a read-only folder, a torn or cut-short cache.

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
    assert not (tmp_path / "run").exists()  # the lock file goes as the run ends, and the folder it made, empty
    # what `kill -9` leaves: the file, naming a process that no longer runs, and no lock held on it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").write_text(f"retinalab active (pid {dead.stdout.strip()})")
    with caplog.at_level(logging.WARNING, logger="retinalab.utils.runs"):
        with run_lock(tmp_path / "run", "retinalab active"):
            pass
    assert f"taking over the lock left by retinalab active (pid {dead.stdout.strip()})" in caplog.text


def test_a_checkpoint_of_another_task_or_backbone_is_refused_unless_the_swap_is_asked_for(
    earlier_fit, tmp_path, capsys
):
    """The issue's second row: `test --config <an SSL-GAN config> --ckpt_path <a ConvNet checkpoint>` printed
    the ConvNet's metrics as the SSL-GAN's. Now one line says what the checkpoint holds; the flag makes the
    swap explicit, and the run's config.yaml then names the model that ran."""
    from retinalab.cli import main

    syn, runs = earlier_fit
    (ckpt,) = (runs / "checkpoints").glob("*.ckpt")
    gan = REPO / "tests" / "conf" / "ssl_gan_tiny.yaml"
    out = tmp_path / "test"
    argv = [
        "test",
        "--config",
        str(gan),
        f"--data.root={syn}",
        f"--data.cache_dir={runs.parent / 'cache'}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={out}",
        f"--ckpt_path={ckpt}",
    ]
    assert main(argv) == 2
    assert errors(capsys.readouterr().err) == [
        f"error: {ckpt} holds a PatchClassifierTask (backbone convnet), but the config's model is a PatchSSGANTask; "
        "run it with the config that trained it (config.yaml in its run folder), or add --model_from_checkpoint true "
        "to use the checkpoint's model."
    ]
    assert not out.exists()
    convnet = [a.replace(str(gan), str(TINY)) for a in argv]
    assert main([*convnet, "--model.backbone=resnet18"]) == 2
    refused = capsys.readouterr().err
    assert "holds a PatchClassifierTask (backbone convnet), but the config's model is a PatchClassifierTask " in refused
    assert "(backbone resnet18)" in refused
    assert main([*argv, "--model_from_checkpoint=true"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["class_path"] == "retinalab.tasks.PatchClassifierTask" and saved["model_from_checkpoint"]


# ---------------------------------------------------------------- full disks, read-only folders, torn caches
def limited(argv: list[str], cwd: Path, max_bytes: int) -> subprocess.CompletedProcess:
    """``retinalab <argv>`` in a process that may not write a file larger than ``max_bytes`` (RLIMIT_FSIZE,
    with SIGXFSZ ignored: the write fails with EFBIG, as a full disk fails with ENOSPC, where it happens)."""
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({max_bytes}, {max_bytes}))\n"
        "from retinalab.cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A ``size`` tmpfs mounted at ``folder`` (``ro`` in ``size`` for a read-only one); skipped where this
    machine refuses the mount (it needs root)."""
    folder.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small file system here ({res.stderr.decode().strip()[:100]})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.slow  # a fit in a process of its own, under a file size limit
def test_a_full_disk_while_the_cache_is_built_ends_in_one_line_and_leaves_nothing(earlier_fit, tmp_path):
    """The cache's arrays are memory-mapped: a full disk killed the process with SIGBUS (exit 135), leaving
    its temporary folder and lock. Now their space is reserved first: one line, nothing left behind."""
    syn, _ = earlier_fit
    cache = tmp_path / "cache"
    res = limited(tiny_fit(syn, tmp_path / "runs", f"--data.cache_dir={cache}"), tmp_path, 1_000_000)
    assert res.returncode == 2, res.stderr[-3000:]
    (line,) = errors(res.stderr)
    assert line.startswith(f"error: {cache}/idrid-") and "(needs 2 MiB)" in line and "ulimit -f" in line
    assert not [p for p in cache.iterdir()] and not (tmp_path / "runs").exists()
    with small_disk(tmp_path / "disk", "2m") as disk:  # the same on a file system that is full (ENOSPC)
        res = limited(tiny_fit(syn, tmp_path / "runs", f"--data.cache_dir={disk}"), tmp_path, 2**40)
        assert res.returncode == 2, res.stderr[-3000:]
        (line,) = errors(res.stderr)
        assert f"error: {disk}/idrid-" in line and "no space left on the device (" in line and "needs 5 MiB" in line
        assert not list(disk.iterdir())


@pytest.mark.slow  # a fit in a process of its own, under a file size limit
def test_a_full_disk_at_a_checkpoint_keeps_no_partial_checkpoint(earlier_fit, tmp_path):
    syn, runs = earlier_fit
    out = tmp_path / "runs"
    argv = tiny_fit(syn, out, f"--data.cache_dir={runs.parent / 'cache'}", "--trainer.limit_val_batches=0")
    res = limited(argv, tmp_path, 150_000)  # the run's config, split and manifest fit; its checkpoint does not
    assert res.returncode == 2, res.stderr[-3000:]
    (line,) = errors(res.stderr)
    assert line.startswith(f"error: {out}/checkpoints/epoch=0-step=") and "file size limit" in line
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["config.yaml", "manifest.json", "split.json"]


def test_a_read_only_run_folder_is_one_line(earlier_fit, tmp_path, capsys):
    from retinalab.cli import main

    syn, runs = earlier_fit
    with small_disk(tmp_path / "ro", "1m,ro") as ro:
        assert main(tiny_fit(syn, ro / "run", f"--data.cache_dir={runs.parent / 'cache'}")) == 2
    (line,) = errors(capsys.readouterr().err)
    assert line == f"error: {ro / 'run'}: cannot create the run folder (Read-only file system)."


def test_a_torn_build_is_cleaned_and_a_cut_short_cache_is_rebuilt(earlier_fit, tmp_path, caplog):
    """What `kill -9` during a build leaves (a hidden temporary folder) goes with the next build of that
    cache; a finished cache whose array was cut short is built again, with a warning, to the same content."""
    import numpy as np

    from retinalab.datamodules import PatchDataModule

    syn, _ = earlier_fit
    kw = dict(image_size=128, patch_size=32, stride=32, patch_out=32, cache_dir=str(tmp_path), cache_workers=0)

    def built():
        dm = PatchDataModule("idrid", str(syn), val_size=3, test_size=3, split_file=str(tmp_path / "s.json"), **kw)
        return dm._build_cache(progress=False)

    first = built()
    patches = np.asarray(first.patches).copy()
    torn = tmp_path / f".{first.path.name}.tmp-0badc0de"
    torn.mkdir()
    (torn / "patches.npy").write_bytes(b"half a build")
    (first.path / "index.json").unlink()  # as a killed build leaves it: incomplete
    with caplog.at_level(logging.WARNING, logger="retinalab.preprocessing.building"):
        again = built()
    assert not torn.exists() and "left by a build of" in caplog.text
    assert np.array_equal(np.asarray(again.patches), patches)
    with open(again.path / "patches.npy", "r+b") as f:  # cut short: np.load's memory map would fail
        f.truncate(1000)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="retinalab.preprocessing.building"):
        rebuilt = built()
    assert "is damaged (ValueError" in caplog.text and "building it again" in caplog.text
    assert np.array_equal(np.asarray(rebuilt.patches), patches)


def test_a_cut_short_active_state_says_what_to_do_and_doing_it_reruns_the_same_run(synth_eophtha, tmp_path, capsys):
    """`active --resume` on a truncated state.json blamed "another version of retinalab"; now the line says
    the file was changed and how to go on, and going on that way gives the same run, from its answers."""
    from retinalab.cli import main

    argv = active_argv(synth_eophtha, tmp_path, "--max_rounds=1")
    assert main(argv) == 0
    state = tmp_path / "al" / "state.json"
    first = json.loads(state.read_text())
    state.write_text(state.read_text()[:200])
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    (line,) = errors(capsys.readouterr().err)
    assert line.startswith(f"error: {state} is cut short (") and "Move it away and run again with --resume" in line
    state.rename(tmp_path / "damaged-state.json")
    assert main([*argv, "--resume"]) == 0
    again = json.loads(state.read_text())
    assert again["labelled"] == first["labelled"] and again["history"][-1]["item"] == first["history"][-1]["item"]


def test_active_names_its_own_options_when_the_split_leaves_nothing_to_train_on(synth_eophtha, tmp_path, capsys):
    from retinalab.cli import main

    assert main(active_argv(synth_eophtha, tmp_path, "--val_size=0.6", "--test_size=0.6")) == 2
    (line,) = errors(capsys.readouterr().err)
    assert "the split leaves no training data" in line and line.endswith("e.g. --val_size 0.2 --test_size 0.2.")


def test_a_script_without_a_main_guard_builds_the_cache_instead_of_hanging(earlier_fit, tmp_path):
    """A script calling retinalab at its top level, without `if __name__ == "__main__":`, hung for good at
    "Caching patches": the workers, started from a forkserver once the process has several threads,
    imported the script again and ran it. They no longer import the caller's script."""
    syn, _ = earlier_fit
    script = tmp_path / "my_script.py"
    script.write_text(
        "import sys, threading, time\n"
        "from retinalab.datasets import read_dataset\n"
        "from retinalab.preprocessing import PatchCache, PatchCacheConfig, PatchGrid\n"
        "print('script body ran', flush=True)\n"
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()  # workers from a forkserver\n"
        "records = read_dataset('idrid', sys.argv[1])\n"
        "config = PatchCacheConfig(grid=PatchGrid(128, 32, 32, 32))\n"
        "cache = PatchCache.build(records, cache_dir=sys.argv[2], config=config, num_workers=2, progress=False)\n"
        "print('built', len(cache))\n"
    )
    res = subprocess.run(
        [sys.executable, str(script), str(syn), str(tmp_path / "cache")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.splitlines() == ["script body ran", "built 24"]  # the body ran once, in the script's process


def test_ddp_as_a_lightning_user_types_it_runs_the_ssl_gan(earlier_fit, caplog):
    """`--trainer.strategy ddp` ended in DDP's reducer traceback on every rank for the SSL-GAN (each optimiser
    step updates one network). It now runs as the strategy that allows that, saying so; the ConvNet keeps
    plain DDP. (A two-process CPU fit of the SSL-GAN under `ddp` runs in tests/cli/test_cli.py's DDP test.)"""
    from retinalab.lightning.cli import cli

    syn, runs = earlier_fit
    common = [f"--data.root={syn}", f"--data.cache_dir={runs.parent / 'cache'}", "--trainer.logger=false"]
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=1", "--trainer.accelerator=cpu"]
    with caplog.at_level(logging.INFO, logger="retinalab.lightning.cli"):
        gan = cli(["--config", str(REPO / "tests" / "conf" / "ssl_gan_tiny.yaml"), *common, *ddp], run=False)
    assert gan.trainer.strategy._ddp_kwargs == {"find_unused_parameters": True}
    assert "PatchSSGANTask updates one network per optimiser step: --trainer.strategy ddp runs as " in caplog.text
    convnet = cli(["--config", str(TINY), *common, *ddp], run=False)
    assert convnet.trainer.strategy._ddp_kwargs == {}


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
