"""Patch cache: contents, reuse, invalidation, atomicity, bad images, parallel build."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from retinalab.datasets import DataFormatError, read_idrid
from retinalab.preprocessing import PatchCache, PatchCacheConfig, PatchGrid

CFG = PatchCacheConfig(grid=PatchGrid(64, 16, 16, 8), thumb_size=32)


def build(records, tmp_path, cfg=CFG, **kw):
    return PatchCache.build(records, tmp_path / "cache", cfg, name="idrid", progress=False, **kw)


def test_cache_contents(idrid_root, tmp_path):
    recs = read_idrid(idrid_root)
    c = build(recs, tmp_path)
    assert c.patches.shape == (11, 16, 8, 8, 3) and c.patches.dtype == np.uint8
    assert isinstance(c.patches, np.memmap)
    labels = dict(zip(c.image_ids, c.image_labels.tolist(), strict=True))
    assert labels["seg/train/IDRiD_01"] == 1  # planted lesions
    assert labels["grading/train/IDRiD_001"] == 0  # grade 0, no masks: all healthy (paper 000)
    assert labels["grading/train/IDRiD_002"] == -1  # grade 2, no masks: unknown
    i = c.image_ids.index("seg/train/IDRiD_01")
    assert 0 < c.labels[i].sum() < 16 and (c.fractions[i] > 0).sum() == c.labels[i].sum()
    assert c.thumbs.shape == (11, 32, 32, 3) and c.mask_thumbs[i].any()
    assert c.coords.shape == (16, 4)


def test_cache_is_reused_and_invalidated(idrid_root, tmp_path):
    recs = read_idrid(idrid_root, subsets=["segmentation"])
    c1 = build(recs, tmp_path)
    stamp = (c1.path / "index.json").stat().st_mtime_ns
    c2 = build(recs, tmp_path)
    assert c2.path == c1.path and (c2.path / "index.json").stat().st_mtime_ns == stamp  # not rebuilt
    # a changed preprocessing parameter -> another cache
    c3 = build(recs, tmp_path, PatchCacheConfig(grid=PatchGrid(64, 16, 8, 8), thumb_size=32))
    assert c3.path != c1.path and c3.patches.shape[1] == 49
    # a changed source file -> another cache, with the new content
    from PIL import Image

    img = recs[0].image_path
    arr = np.asarray(Image.open(img)).copy()
    arr[20:44, 36:60] = (255, 255, 255)  # paint a white square inside the field of view
    Image.fromarray(arr).save(img)
    c4 = build(recs, tmp_path)
    assert c4.path != c1.path
    assert not np.array_equal(np.asarray(c4.patches[0]), np.asarray(c1.patches[0]))
    np.testing.assert_array_equal(np.asarray(c4.patches[1]), np.asarray(c1.patches[1]))


def test_bad_image_aborts_without_leaving_anything(idrid_root, tmp_path):
    recs = read_idrid(idrid_root, subsets=["segmentation"])
    recs[2].image_path.write_bytes(b"garbage")
    with pytest.raises(DataFormatError, match=recs[2].image_path.name):
        build(recs, tmp_path)
    assert os.listdir(tmp_path / "cache") == []  # no half-written cache, no temp folder


def test_bad_image_skipped_on_request(idrid_root, tmp_path):
    recs = read_idrid(idrid_root, subsets=["segmentation"])
    recs[2].image_path.write_bytes(b"garbage")
    c = build(recs, tmp_path, on_error="skip")
    assert len(c) == 4 and recs[2].image_id not in c.image_ids
    assert c.patches.shape[0] == 4 and len(c.skipped) == 1 and "cannot decode" in c.skipped[0]
    ok = build(read_idrid(idrid_root, subsets=["segmentation"]), tmp_path, on_error="skip")
    # the rows kept are the right ones: same patches as a cache built without the bad image
    j = c.image_ids.index(recs[3].image_id)
    clean = PatchCache.build([recs[3]], tmp_path / "other", CFG, progress=False)
    np.testing.assert_array_equal(np.asarray(c.patches[j]), np.asarray(clean.patches[0]))
    assert ok.path == c.path  # same files, same parameters


def test_mask_size_mismatch(idrid_root, tmp_path):
    recs = read_idrid(idrid_root, subsets=["segmentation"])
    from tests.data.common import save_mask, square_mask

    save_mask(recs[0].masks["MA"], square_mask((40, 40), 5, 5))
    with pytest.raises(DataFormatError, match="mask is 40x40 but its image"):
        build(recs, tmp_path)


def test_incomplete_cache_folder_is_never_read(idrid_root, tmp_path):
    recs = read_idrid(idrid_root, subsets=["segmentation"])
    c = build(recs, tmp_path)
    path = c.path
    (path / "index.json").unlink()  # as if a build had died before completing
    with pytest.raises(FileNotFoundError, match="not a complete patch cache"):
        PatchCache(path)
    c2 = build(recs, tmp_path)  # rebuilt, not read
    assert c2.path == path and (path / "index.json").is_file()
    assert json.loads((path / "index.json").read_text())["images"][0]["image_id"] == recs[0].image_id


def test_parallel_build_equals_serial(idrid_root, tmp_path):
    recs = read_idrid(idrid_root)
    serial = build(recs, tmp_path / "a")
    parallel = build(recs, tmp_path / "b", num_workers=2)
    for name in ("patches", "labels", "fractions", "thumbs", "mask_thumbs"):
        np.testing.assert_array_equal(np.asarray(getattr(serial, name)), np.asarray(getattr(parallel, name)))


def test_cache_pickles_by_path(idrid_root, tmp_path):
    import pickle

    c = build(read_idrid(idrid_root, subsets=["segmentation"]), tmp_path)
    blob = pickle.dumps(c)
    assert len(blob) < 2000  # not the arrays
    c2 = pickle.loads(blob)
    np.testing.assert_array_equal(np.asarray(c2.patches), np.asarray(c.patches))
    # a DataLoader worker reads arrays only: the per-image metadata is not parsed until asked for
    assert "images" not in vars(c2) and "index" not in vars(c2) and len(c2) == len(c) and c2.grid == c.grid
    assert c2.images == c.images and (c2.image_labels == c.image_labels).all() and "index" in vars(c2)


def test_kill_9_mid_build_leaves_no_cache_to_read_and_the_next_build_completes(idrid_root, tmp_path):
    """A process killed (SIGKILL, no cleanup runs) while caching its 6th image: no cache folder appears
    under the final name (only the temporary one it was writing), its lock is released by the kernel,
    and the next build makes a complete cache equal to an uninterrupted one."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(repo)!r})
from retinalab.datasets import read_idrid
from retinalab.preprocessing import PatchCache, PatchCacheConfig, PatchGrid, cache
real = cache._process
seen = []
def dying(job):
    seen.append(job[0])
    if len(seen) == 6:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(job)
cache._process = dying
PatchCache.build(read_idrid({str(idrid_root)!r}), {str(tmp_path / "cache")!r},
                 PatchCacheConfig(grid=PatchGrid(64, 16, 16, 8), thumb_size=32), name="idrid", progress=False)
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    left = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert left and all(name.startswith(".") for name in left), (
        left
    )  # a .idrid-<key>.tmp-<id> folder and the lock, nothing else
    recs = read_idrid(idrid_root)
    c = build(recs, tmp_path)
    assert (
        len(c) == 11 and json.loads((c.path / "index.json").read_text())["images"][-1]["image_id"] == recs[-1].image_id
    )
    fresh = build(recs, tmp_path / "fresh")
    assert np.array_equal(np.asarray(c.patches), np.asarray(fresh.patches)) and np.array_equal(c.labels, fresh.labels)


def test_pools_never_fork_a_process_that_runs_other_threads(idrid_root, tmp_path):
    """A forked child keeps only the forking thread, and any lock another thread held stays locked in it:
    after training in the same process (torch's and OpenCV's thread pools running) the cache builder's
    workers hung for good in cv2.setNumThreads (seen in benchmarks/label_efficiency.py, building its
    second preset's cache). With another thread alive the pools start from a fork server instead, and
    build the same cache, as do the synthetic writer's."""
    import threading

    from retinalab.preprocessing.building import pool_context
    from retinalab.synthetic import write_synthetic

    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    try:
        assert pool_context().get_start_method() in ("forkserver", "spawn")
        cfg = PatchCacheConfig(grid=PatchGrid(128, 32, 32, 32), thumb_size=32)
        recs = read_idrid(idrid_root)
        pooled = PatchCache.build(recs, tmp_path / "pooled", cfg, num_workers=2, progress=False)
        a = write_synthetic("eyepacs", tmp_path / "a", num_images=4, seed=1, size=(96, 64), workers=2)
    finally:
        stop.set()
        other.join()
    serial = PatchCache.build(recs, tmp_path / "serial", cfg, num_workers=0, progress=False)
    assert np.array_equal(np.asarray(pooled.patches), np.asarray(serial.patches))
    b = write_synthetic("eyepacs", tmp_path / "b", num_images=4, seed=1, size=(96, 64), workers=1)
    assert sorted(p.read_bytes() for p in a.rglob("*.jpeg")) == sorted(p.read_bytes() for p in b.rglob("*.jpeg"))
