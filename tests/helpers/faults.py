"""Helpers of the fault tests (``tests/faults``): run a command as a user would, hold a run folder from
another process, limit file sizes, mount a small or read-only file system, hash a folder."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

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
