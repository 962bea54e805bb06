"""Full disks, read-only folders and torn caches (issue 48): one line naming the file or cache, and
nothing half-written left behind; a cache a killed build left, cut short, or whose index does not match its
name is built again with a warning."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers.faults import errors, limited, small_disk, tiny_fit


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
    # an index written for other parameters than the key in the folder's name (a folder copied or edited)
    index = json.loads((rebuilt.path / "index.json").read_text())
    index["config"]["thumb_size"] += 1
    (rebuilt.path / "index.json").write_text(json.dumps(index))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="retinalab.preprocessing.building"):
        matched = built()
    assert "does not match its name (CacheMismatch: its index.json was written for other parameters (thumb_size))" in (
        caplog.text
    )
    assert np.array_equal(np.asarray(matched.patches), patches)
    assert (
        json.loads((matched.path / "index.json").read_text())["config"]["thumb_size"]
        == index["config"]["thumb_size"] - 1
    )


KILLED_BUILD = """
import sys, time
import retinalab.preprocessing.cache as cache
from retinalab.datasets import read_dataset

process = cache._process
def slow(job):  # a photograph every 0.3 s, so that the build is surely under way when it is killed
    time.sleep(0.3)
    return process(job)
cache._process = slow
config = cache.PatchCacheConfig(grid=cache.PatchGrid(128, 32, 32, 32))
cache.PatchCache.build(read_dataset("idrid", sys.argv[1]), cache_dir=sys.argv[2], config=config, progress=False)
"""


def test_a_build_killed_with_sigkill_leaves_nothing_the_next_build_keeps(earlier_fit, tmp_path, caplog):
    """`kill -9` during a build, then the same build again: the killed build's temporary folder goes, with a
    warning, and the cache is the one a build that was never killed makes."""
    import numpy as np

    from retinalab.datasets import read_dataset
    from retinalab.preprocessing import PatchCache, PatchCacheConfig, PatchGrid

    syn, _ = earlier_fit
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(syn), str(cache)])
    deadline = time.monotonic() + 120
    while not list(cache.glob(".patches-*.tmp-*/patches.npy")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # a few photographs into the arrays
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    (torn,) = cache.glob(".patches-*.tmp-*")
    assert not [p for p in cache.iterdir() if p.name.startswith("patches-")]  # no cache was finished
    records = read_dataset("idrid", str(syn))
    config = PatchCacheConfig(grid=PatchGrid(128, 32, 32, 32))
    with caplog.at_level(logging.WARNING, logger="retinalab.preprocessing.building"):
        after = PatchCache.build(records, cache_dir=cache, config=config, progress=False)
    assert "left by a build of" in caplog.text and not torn.exists()
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [after.path.name]
    clean = PatchCache.build(records, cache_dir=tmp_path / "clean", config=config, progress=False)
    assert np.array_equal(np.asarray(after.patches), np.asarray(clean.patches))
