"""On-disk patch cache: decode and patch each image once, read memory-mapped arrays afterwards.

A cache folder ``<cache_dir>/<name>-<key>`` holds::

    index.json        parameters, per-image metadata, skipped files
    patches.npy       N x G x s x s x 3 uint8   (G patches of side s per image)
    labels.npy        N x G int8              (1 diseased, 0 healthy, -1 unknown)
    fractions.npy     N x G float32           (lesion-pixel fraction of each patch)
    coords.npy        G x 4 int32             (row, col, y0, x0 at the preprocessed resolution)
    thumbs.npy        N x t x t x 3 uint8     (preprocessed image, for overlays)
    mask_thumbs.npy   N x t x t uint8         (union lesion mask, for localisation metrics)

The key hashes the preprocessing parameters and, for every source file, its path, size and
modification time: a changed parameter or file gives a new key, hence a rebuild. A cache is built in
a temporary sibling folder and renamed into place only when complete, so a half-written cache is
never read. Building runs in worker processes that write straight into the memory-mapped arrays (a
mapping per image, so no process's memory grows with the dataset); the main process holds no image data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..datasets.base import LESIONS, DataFormatError, FundusRecord, OnError
from .building import create_array, default_cache_dir, open_built, run_image_jobs
from .fundus import load_fundus
from .patches import DISEASED, HEALTHY, UNKNOWN, PatchGrid

log = logging.getLogger(__name__)

CACHE_VERSION = 1
ARRAYS = ("patches", "labels", "fractions", "thumbs", "mask_thumbs")


@dataclass(frozen=True)
class PatchCacheConfig:
    """Everything that changes the cached arrays.

    Args:
        grid: the patch grid (image size, patch size, stride, output size).
        crop_fov: crop to the field of view before resizing.
        normalize: divide by the image's maximum intensity (paper 000).
        fast_decode: reduced-size JPEG decoding (identical up to JPEG rounding, and faster:
            docs/benchmarks.md, "Patch cache").
        grade0_healthy: images without lesion masks but with grade 0 get all-healthy patches
            (paper 000's 168 grade-0 IDRiD images); otherwise their patches are unknown (-1).
        lesions: lesion masks whose union defines a diseased patch (never ``OD``).
        thumb_size: side of the stored preview image and mask.
    """

    grid: PatchGrid = field(default_factory=PatchGrid)
    crop_fov: bool = True
    normalize: bool = True
    fast_decode: bool = True
    grade0_healthy: bool = True
    lesions: tuple[str, ...] = LESIONS
    thumb_size: int = 256

    def __post_init__(self) -> None:
        bad = [k for k in self.lesions if k not in LESIONS]
        if bad:
            raise ValueError(f"lesions {bad} are not DR lesions; choose from {list(LESIONS)}")


def _stat(path: Path | None) -> list:
    if path is None:
        return [None]
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return [str(path), None]
    return [str(path), st.st_size, st.st_mtime_ns]


def cache_key(records: Sequence[FundusRecord], cfg: Any) -> str:
    """Hash of the parameters (a dataclass) and of every source file's path, size and mtime."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "cfg": asdict(cfg)}, sort_keys=True).encode())
    for r in records:
        item = [r.image_id, _stat(Path(r.image_path)), r.grade]
        item += [[k, _stat(None if p is None else Path(p))] for k, p in sorted(r.masks.items())]
        h.update(json.dumps(item).encode())
    return h.hexdigest()[:20]


def record_meta(r: FundusRecord) -> dict:
    return {
        "image_id": r.image_id,
        "image_path": str(r.image_path),
        "grade": r.grade,
        "dme_risk": r.dme_risk,
        "patient_id": r.patient_id,
        "split": r.split,
        "dataset": r.dataset,
        "group": r.group,
        "annotated": sorted(r.masks),
    }


# ---------------------------------------------------------------- worker side
_WORKER: dict = {}


def _worker_init(tmp: str) -> None:
    cv2.setNumThreads(1)
    _WORKER.clear()
    _WORKER["tmp"] = Path(tmp)


def _write_row(i: int, rows: dict[str, np.ndarray]) -> None:
    """Write row ``i`` of each array through a mapping opened for this row only: the pages written
    leave the worker's resident set when the mapping closes (they stay in the page cache until
    written back), so a worker's memory does not grow with the number of images it has cached."""
    for name, value in rows.items():
        arr = np.load(_WORKER["tmp"] / f"{name}.npy", mmap_mode="r+")
        arr[i] = value
        del arr


def _process(job: tuple[int, FundusRecord, PatchCacheConfig]) -> tuple[int, str | None, int]:
    """Preprocess one image into row ``i`` of the arrays. Returns (i, error or None, image label)."""
    i, record, cfg = job
    try:
        pre = load_fundus(
            record,
            size=cfg.grid.image_size,
            crop_fov=cfg.crop_fov,
            normalize=cfg.normalize,
            structures=cfg.lesions,
            fast_decode=cfg.fast_decode,
        )
    except DataFormatError as e:
        return i, str(e), UNKNOWN
    union = pre.lesion_union(cfg.lesions)
    grid = cfg.grid
    if union is None:
        fractions = np.zeros(grid.num_patches, dtype=np.float32)
        healthy = cfg.grade0_healthy and record.grade == 0
        labels = grid.labels(None, healthy_if_unannotated=healthy)
        image_label = HEALTHY if healthy else UNKNOWN
        union = np.zeros(pre.image.shape[:2], dtype=bool)
    else:
        fractions = grid.lesion_fraction(union)
        labels = grid.labels(fractions)
        image_label = DISEASED if labels.max() > 0 else HEALTHY
    t = cfg.thumb_size
    _write_row(
        i,
        {
            "patches": grid.extract(pre.image),
            "labels": labels,
            "fractions": fractions,
            "thumbs": cv2.resize(pre.image, (t, t), interpolation=cv2.INTER_AREA),
            "mask_thumbs": cv2.resize(union.astype(np.float32), (t, t), interpolation=cv2.INTER_AREA) > 0,
        },
    )
    return i, None, image_label


# ---------------------------------------------------------------- cache object
class PatchCache:
    """Read-only view of a built cache; arrays are memory-mapped, nothing is decoded.

    Attributes:
        patches: ``N x G x s x s x 3`` uint8 memmap.
        labels: ``N x G`` int8 (1 diseased, 0 healthy, -1 unknown).
        fractions: ``N x G`` float32 lesion-pixel fractions.
        coords: ``G x 4`` int32 (row, col, y0, x0).
        image_labels: ``N`` int8 image-level labels (any diseased patch).
        images: per-image metadata dicts (``image_id``, ``grade``, ``group``, ``split``...).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "index.json").is_file():
            raise FileNotFoundError(f"{self.path} is not a complete patch cache (no index.json)")
        self.grid = PatchGrid(**self.index["config"]["grid"])
        self._open_arrays()

    def _open_arrays(self) -> None:
        for name in ARRAYS:
            setattr(self, name, np.load(self.path / f"{name}.npy", mmap_mode="r"))
        self.coords = np.load(self.path / "coords.npy")

    # The per-image metadata is parsed on first use: DataLoader workers get the cache by path and
    # only read the arrays, so their memory does not grow with the number of images.
    @cached_property
    def index(self) -> dict:
        return json.loads((self.path / "index.json").read_text())

    @cached_property
    def images(self) -> list[dict]:
        return self.index["images"]

    @cached_property
    def skipped(self) -> list[str]:
        return self.index.get("skipped", [])

    @cached_property
    def image_labels(self) -> np.ndarray:
        return np.asarray([m["image_label"] for m in self.images], dtype=np.int8)

    def __len__(self) -> int:
        return int(self.patches.shape[0])

    def __getstate__(self) -> dict:
        # Pickle by path: a pickled np.memmap would copy the whole array into every DataLoader
        # worker started with "spawn"/"forkserver".
        return {"path": str(self.path), "grid": asdict(self.grid)}

    def __setstate__(self, state: dict) -> None:
        self.path = Path(state["path"])
        self.grid = PatchGrid(**state["grid"])
        self._open_arrays()

    @property
    def image_ids(self) -> list[str]:
        return [m["image_id"] for m in self.images]

    @property
    def patches_per_image(self) -> int:
        return self.grid.num_patches

    @classmethod
    def build(
        cls,
        records: Sequence[FundusRecord],
        cache_dir: str | Path | None = None,
        config: PatchCacheConfig | None = None,
        name: str = "patches",
        num_workers: int = 0,
        on_error: OnError = "raise",
        progress: bool = True,
    ) -> PatchCache:
        """Return the cache for ``records``/``config``, building it first if needed.

        Args:
            records: images to cache (order is kept).
            cache_dir: parent folder (default :func:`default_cache_dir`).
            config: preprocessing parameters.
            name: prefix of the cache folder name.
            num_workers: worker processes (0 = in this process; -1 = all cores).
            on_error: ``"skip"`` leaves out images that fail to decode (listed in ``skipped``).
            progress: show a progress bar.

        Raises:
            DataFormatError: for a bad image when ``on_error="raise"``; nothing is left behind.
        """
        if not records:
            raise ValueError("no images to cache")
        config = config or PatchCacheConfig()
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        final = cache_dir / f"{name}-{cache_key(records, config)}"
        return open_built(
            final,
            lambda tmp: cls._build_into(tmp, records, config, num_workers, on_error, progress),
            cls,
            asdict(config),
            len(records),
        )

    @staticmethod
    def _build_into(
        tmp: Path,
        records: Sequence[FundusRecord],
        cfg: PatchCacheConfig,
        num_workers: int,
        on_error: OnError,
        progress: bool,
    ) -> None:
        n, g, s, t = len(records), cfg.grid.num_patches, cfg.grid.out_size, cfg.thumb_size
        shapes = {
            "patches": ((n, g, s, s, 3), np.uint8),
            "labels": ((n, g), np.int8),
            "fractions": ((n, g), np.float32),
            "thumbs": ((n, t, t, 3), np.uint8),
            "mask_thumbs": ((n, t, t), np.uint8),
        }
        for key, (shape, dtype) in shapes.items():
            create_array(tmp / f"{key}.npy", shape, dtype).flush()  # a full disk: ENOSPC now, not SIGBUS later
        np.save(tmp / "coords.npy", cfg.grid.coords())
        jobs = [(i, r, cfg) for i, r in enumerate(records)]
        start = time.perf_counter()
        desc = f"Caching patches ({tmp.name.split('.tmp')[0].lstrip('.')})"
        try:
            labels, errors = run_image_jobs(
                _process, jobs, num_workers, on_error, desc, progress, _worker_init, (str(tmp),)
            )
        finally:
            _WORKER.clear()
        image_labels = np.full(n, UNKNOWN, dtype=np.int8)
        for i, label in labels.items():
            image_labels[i] = label
        keep = [i for i in range(n) if i not in errors]
        if errors:
            _compact(tmp, keep, shapes)
        images = []
        for i in keep:
            meta = record_meta(records[i])
            meta["image_label"] = int(image_labels[i])
            images.append(meta)
        index = {
            "version": CACHE_VERSION,
            "config": asdict(cfg),
            "images": images,
            "skipped": [errors[i] for i in sorted(errors)],
            "build_seconds": time.perf_counter() - start,
        }
        (tmp / "index.json").write_text(json.dumps(index, indent=1))


def _compact(tmp: Path, keep: list[int], shapes: dict) -> None:
    """Drop the rows of skipped images, one array at a time, in bounded chunks."""
    for key, (shape, dtype) in shapes.items():
        src = np.load(tmp / f"{key}.npy", mmap_mode="r")
        dst = create_array(tmp / f"{key}.new.npy", (len(keep), *shape[1:]), dtype)
        for start in range(0, len(keep), 256):
            dst[start : start + 256] = src[keep[start : start + 256]]
        dst.flush()
        del src, dst
        os.replace(tmp / f"{key}.new.npy", tmp / f"{key}.npy")
