"""Patch loading: a cached epoch versus an epoch that decodes the images, side by side in one run.

Also prints the cache build time per source image next to the time to merely decode that JPEG
(full PIL decode, PIL reduced-size ``draft`` decode, OpenCV full and ``IMREAD_REDUCED_COLOR_4``).

Images are synthetic fundus photographs written in IDRiD's layout at IDRiD's size (4288x2848).

    python benchmarks/patch_cache.py [--images 8] [--size 4288x2848] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from _common import machine  # benchmarks/ is on sys.path when a script runs
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from retinalab.datamodules.patch import PatchDataset
from retinalab.datasets import read_idrid
from retinalab.preprocessing import PatchCache, PatchCacheConfig, PatchGrid, load_fundus
from retinalab.synthetic import write_synthetic


class DecodingPatchDataset(Dataset):
    """The same samples as PatchDataset, but decoding and patching the image for every patch request
    (what an uncached loader does; it keeps the last image to be fair to sequential access)."""

    def __init__(self, records, grid: PatchGrid):
        self.records, self.grid, self._last = records, grid, (None, None)

    def __len__(self):
        return len(self.records) * self.grid.num_patches

    def __getitem__(self, k):
        i, j = divmod(k, self.grid.num_patches)
        if self._last[0] != i:
            pre = load_fundus(self.records[i], self.grid.image_size)
            self._last = (i, self.grid.extract(pre.image))
        patch = self._last[1][j]
        return {"image": torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1).float().div_(255.0)}


def epoch_time(ds, batch_size=100) -> tuple[float, int]:
    t = time.perf_counter()
    n = 0
    for b in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0):
        n += len(b["image"])
    return time.perf_counter() - t, n


def shuffled_epoch_time(ds, batch_size=100) -> float:
    t = time.perf_counter()
    for _ in DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0):
        pass
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--size", default="4288x2848")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--keep", help="reuse/keep the synthetic data in this folder")
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="retinalab-bench-"))
    data = work / "idrid"
    if not data.exists():
        write_synthetic("idrid", data, num_images=a.images, seed=0, size=(w, h), workers=a.workers)
    # segmentation images (4 lesion masks + optic disc to read) and grading images (no masks)
    records = read_idrid(data)
    jpg = records[0].image_path
    torch.set_num_threads(1)

    # --- decode-only timings (one core) on one full-size JPEG
    def best(fn, n=3):
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return min(ts)

    def pil_full():
        with Image.open(jpg) as im:
            im.convert("RGB").load()

    def pil_draft():
        with Image.open(jpg) as im:
            im.draft("RGB", (im.size[0] // 4, im.size[1] // 4))
            im.convert("RGB").load()

    cv2.setNumThreads(1)
    t_pil, t_draft = best(pil_full), best(pil_draft)
    t_cv = best(lambda: cv2.imread(str(jpg), cv2.IMREAD_COLOR))
    t_cv4 = best(lambda: cv2.imread(str(jpg), cv2.IMREAD_REDUCED_COLOR_4))
    t_pre = best(lambda: load_fundus(records[0], 1024, structures=None))

    # --- cache build (parallel workers) and single-process build, per image
    cfg = PatchCacheConfig(grid=PatchGrid(1024, 128, 128, 32))
    cache_dir = work / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    t = time.perf_counter()
    PatchCache.build(records, cache_dir / "serial", cfg, num_workers=0, progress=False)
    t_build1 = (time.perf_counter() - t) / len(records)
    t = time.perf_counter()
    cache = PatchCache.build(records, cache_dir / "parallel", cfg, num_workers=a.workers, progress=False)
    t_buildp = (time.perf_counter() - t) / len(records)

    # --- epochs: cached vs decoding, same samples, same loader
    rows = np.arange(len(cache))
    cached = PatchDataset(cache, rows)
    epoch_time(cached)  # warm the page cache: later epochs read from memory, as in training
    t_cached, n = epoch_time(cached)
    t_cached_shuf = shuffled_epoch_time(cached)
    t_decode, n2 = epoch_time(DecodingPatchDataset(records, cfg.grid))
    assert n == n2

    print(f"machine: {machine()}")
    n_seg = sum(r.has_lesion_masks for r in records)
    print(
        f"data: {len(records)} synthetic IDRiD-layout JPEGs of {w}x{h} ({n_seg} with 5 mask TIFFs each), "
        f"grid 8x8 of 128 px at 1024 -> 32 px ({n} patches)"
    )
    print()
    print("| epoch over all patches | seconds | patches/s | ratio |")
    print("|---|---|---|---|")
    print(f"| decoding each image | {t_decode:.2f} | {n / t_decode:,.0f} | 1.0x |")
    print(f"| cached (sequential) | {t_cached:.3f} | {n / t_cached:,.0f} | {t_decode / t_cached:.0f}x faster |")
    print(
        f"| cached (shuffled) | {t_cached_shuf:.3f} | {n / t_cached_shuf:,.0f} | {t_decode / t_cached_shuf:.0f}x "
        "faster |"
    )
    print()
    print("| per source image (one core unless noted) | ms |")
    print("|---|---|")
    print(f"| PIL full decode | {t_pil * 1e3:.0f} |")
    print(f"| PIL draft (1/4 DCT) decode | {t_draft * 1e3:.0f} |")
    print(f"| OpenCV full decode | {t_cv * 1e3:.0f} |")
    print(f"| OpenCV IMREAD_REDUCED_COLOR_4 | {t_cv4 * 1e3:.0f} |")
    print(f"| load_fundus (draft decode + FOV crop + resize + normalise) | {t_pre * 1e3:.0f} |")
    print(f"| cache build, 1 process (incl. masks, patches, thumbnails) | {t_build1 * 1e3:.0f} |")
    print(f"| cache build, {a.workers} workers (wall time / image) | {t_buildp * 1e3:.0f} |")
    print()
    print(f"cached vs decoding epoch: {t_decode / t_cached_shuf:.0f}x (target >= 50x)")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
