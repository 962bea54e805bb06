"""Active-learning bookkeeping at a clinic's scale (paper 002's loop, without the network).

`retinalab active` groups the pool's patches by image once (Algorithm 2 sums EGL per image; the
heatmap reads one image's grid) and, every round of `select: images`, finds the training images that
still have unlabelled patches. Done naively, both scan the whole pool once per image: quadratic in the
number of images. This script times retinalab's way (one sort, `group_by_image`; a boolean mask of
unlabelled items) against that per-image scan on pool indices shaped like a grid pool (`--per-image`
patches per image, a quarter of them labelled), for growing numbers of images. The per-image scans are
timed on `--sample` images and scaled (they are linear in the number of images scanned).

    python benchmarks/active_bookkeeping.py [--images 2000 20000] [--per-image 50] [--sample 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import machine  # benchmarks/ is on sys.path when a script runs

from retinalab.active.pool import group_by_image


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(n: int, per_image: int, sample_size: int, rng: np.random.Generator) -> str:
    """One table row: ``n`` images of ``per_image`` pool items each."""
    image = np.repeat(np.arange(n, dtype=np.int32), per_image)  # the pool's image column
    items = np.arange(len(image), dtype=np.int64)
    remaining = np.sort(rng.choice(items, int(0.75 * len(items)), replace=False))
    sample = rng.choice(n, min(sample_size, n), replace=False)
    scale = n / len(sample)
    t_scan = timed(lambda: {int(i): items[image[items] == i] for i in sample}) * scale
    groups: dict[int, np.ndarray] = {}
    t_sort = timed(lambda: groups.update(group_by_image(items, image, range(n))))
    t_isin = timed(lambda: [i for i in sample if np.isin(groups[int(i)], remaining).any()]) * scale

    def by_mask() -> list[int]:
        free = np.zeros(len(items), dtype=bool)
        free[remaining] = True
        return [i for i in range(n) if free[groups[i]].any()]

    t_mask = timed(by_mask)
    return (
        f"| {n:,} | {len(items):,} | {t_scan:.2f} s | {t_sort:.3f} s | {t_scan / t_sort:.0f}x "
        f"| {t_isin:.1f} s | {t_mask:.3f} s | {t_isin / t_mask:.0f}x |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, nargs="+", default=[2_000, 20_000])
    ap.add_argument("--per-image", type=int, default=50)
    ap.add_argument("--sample", type=int, default=200)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"machine: {machine()}")
    print(
        f"{a.per_image} grid patches per image, 25% of them labelled; per-image scans timed on {a.sample} images and "
        "scaled\n"
    )
    print(
        "| images | pool items | group by image: scan per image | one sort | ratio | images with unlabelled patches: "
        "np.isin per image | mask | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in a.images:
        print(measure(n, a.per_image, a.sample, rng))


if __name__ == "__main__":
    main()
