"""Exudate patches for active learning (paper 002, section 4.1).

Paper 002 crops 48x48 patches from e-ophtha EX: exudate patches and healthy patches, balanced per
class, each training patch augmented with its 7 dihedral variants, and splits by patient. Two kinds
of patch are built for every image, once, into a cache folder:

* **centred** (``kind = 0``; images with an exudate mask only): exudate patches centred on exudate
  pixels and healthy patches centred on field-of-view pixels whose whole patch holds no exudate
  pixel. These are "the ground-truth patches" a simulated oracle labels (the paper's setting).
* **grid** (``kind = 1``; every image): a regular grid with a configurable stride over the field of
  view. Algorithm 2 "patchifies" an image with it to sum EGL over the image, the EGL heatmap is
  drawn from it, and a human oracle labels grid patches (no mask is needed to make them). A grid
  patch is exudate when any of its pixels is (unknown, -1, without a mask).

The cache key covers the parameters and every source file's path, size and mtime; a cache is built
in a temporary folder and renamed into place, so a half-built one is never read.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from ..datasets.base import DataFormatError, FundusRecord, OnError
from ..preprocessing.building import create_array, default_cache_dir, open_built, run_image_jobs
from ..preprocessing.cache import cache_key, record_meta
from ..preprocessing.fundus import load_fundus
from ..preprocessing.patches import PatchGrid
from ..utils.errors import ConfigError

log = logging.getLogger(__name__)

CENTRED, GRID = 0, 1
HEALTHY, EXUDATE, UNKNOWN = 0, 1, -1
CLASS_NAMES = ("healthy", "exudate")
ARRAYS = ("patches", "labels", "image", "centre", "kind")


@dataclass(frozen=True)
class ExudatePatchConfig:
    """How the patches are cut.

    Args:
        lesion: the mask that makes a patch positive (``EX``: hard exudates).
        image_size: each photograph's field of view is cropped to a square and resized to this side
            before cutting (e-ophtha's photographs are 1440-2540 px wide; 1024 keeps 48 px patches
            about as large relative to the eye as the paper's).
        patch_size: patch side (paper 002: 48).
        exudate_per_image: at most this many exudate-centred patches per image with exudates.
        healthy_per_image: healthy-centred patches drawn per annotated image (the splits are balanced
            afterwards by subsampling the larger class).
        grid_stride: stride of the grid that patchifies images for Algorithm 2 and heatmaps.
        min_fov_fraction: a grid patch is kept when at least this fraction of it is inside the field of view.
        view_size: side of the stored preview of each image (query sheets, heatmaps).
        crop_fov / normalize / fast_decode: as in :func:`retinalab.preprocessing.load_fundus`.
        seed: the centre sampling seed (per image it is ``seed`` + the image's position).
    """

    lesion: str = "EX"
    image_size: int = 1024
    patch_size: int = 48
    exudate_per_image: int = 40
    healthy_per_image: int = 8
    grid_stride: int = 48
    min_fov_fraction: float = 0.5
    view_size: int = 768
    crop_fov: bool = True
    normalize: bool = True
    fast_decode: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not 16 <= self.patch_size <= self.image_size:
            raise ConfigError(f"patch_size={self.patch_size} must be in [16, image_size={self.image_size}]")
        if self.grid_stride <= 0:
            raise ConfigError(f"grid_stride must be positive, got {self.grid_stride}")
        if not 0 <= self.min_fov_fraction <= 1:
            raise ConfigError(f"min_fov_fraction must be in [0, 1], got {self.min_fov_fraction}")

    @property
    def grid(self) -> PatchGrid:
        return PatchGrid(self.image_size, self.patch_size, self.grid_stride, self.patch_size)


def fov_mask(image: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Field-of-view pixels of a preprocessed photograph (brighter than ``threshold`` x its 99th
    percentile, holes closed)."""
    lum = image.max(axis=2).astype(np.float32)
    hi = float(np.percentile(lum, 99)) or 1.0
    fov = (lum > threshold * hi).astype(np.uint8)
    k = max(3, image.shape[0] // 64) | 1
    fov = cv2.morphologyEx(fov, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return fov.astype(bool)


def window_sums(mask: np.ndarray, size: int) -> np.ndarray:
    """Sum of ``mask`` over every ``size x size`` window; entry (y, x) is the window with top-left (y, x)."""
    ii = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    ii[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    return ii[size:, size:] - ii[:-size, size:] - ii[size:, :-size] + ii[:-size, :-size]


def image_patches(
    image: np.ndarray, lesion: np.ndarray | None, cfg: ExudatePatchConfig, seed: int
) -> dict[str, np.ndarray]:
    """Cut the centred and grid patches of one preprocessed image.

    Args:
        image: ``S x S x 3`` uint8 (``S = cfg.image_size``).
        lesion: ``S x S`` bool exudate mask, or ``None`` when the image is not annotated.
        cfg: the parameters.
        seed: seed of this image's centre sampling.

    Returns:
        ``patches`` N x P x P x 3 uint8, ``labels`` N int8, ``centre`` N x 2 int32 (y, x of the patch
        centre, ``P // 2`` from its top-left), ``kind`` N uint8 (centred first, then grid).
    """
    p, half = cfg.patch_size, cfg.patch_size // 2
    rng = np.random.default_rng(seed)
    fov = fov_mask(image)
    fov_frac = window_sums(fov, p) / (p * p)
    tops: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    kinds: list[np.ndarray] = []
    if lesion is not None:
        ex_sum = window_sums(lesion, p)
        # centre (y, x) <-> top-left (y - half, x - half); only centres whose patch fits
        n_top = ex_sum.shape[0]
        centres_ok = np.zeros_like(lesion)
        centres_ok[half : half + n_top, half : half + n_top] = True
        ex_pix = np.argwhere(lesion & centres_ok)
        if len(ex_pix):
            take = rng.choice(len(ex_pix), size=min(cfg.exudate_per_image, len(ex_pix)), replace=False)
            tops.append(ex_pix[np.sort(take)] - half)
            labels.append(np.full(len(take), EXUDATE, np.int8))
        ok = (ex_sum == 0) & (fov_frac >= max(cfg.min_fov_fraction, 0.5))
        ok &= fov[half : half + n_top, half : half + n_top]
        cand = np.argwhere(ok)
        if len(cand):
            take = rng.choice(len(cand), size=min(cfg.healthy_per_image, len(cand)), replace=False)
            tops.append(cand[np.sort(take)])
            labels.append(np.full(len(take), HEALTHY, np.int8))
    n_centred = sum(len(t) for t in tops)
    kinds.append(np.zeros(n_centred, np.uint8))
    coords = cfg.grid.coords()[:, 2:]
    keep = fov_frac[coords[:, 0], coords[:, 1]] >= cfg.min_fov_fraction
    grid_tops = coords[keep]
    tops.append(grid_tops)
    if lesion is None:
        labels.append(np.full(len(grid_tops), UNKNOWN, np.int8))
    else:
        labels.append((ex_sum[grid_tops[:, 0], grid_tops[:, 1]] > 0).astype(np.int8))
    kinds.append(np.ones(len(grid_tops), np.uint8))
    all_tops = np.concatenate(tops).astype(np.int32) if tops else np.zeros((0, 2), np.int32)
    patches = (
        np.stack([image[y : y + p, x : x + p] for y, x in all_tops])
        if len(all_tops)
        else np.zeros((0, p, p, 3), np.uint8)
    )
    return {
        "patches": patches,
        "labels": np.concatenate(labels).astype(np.int8),
        "centre": all_tops + half,
        "kind": np.concatenate(kinds),
    }


def _process(job: tuple[int, FundusRecord, ExudatePatchConfig, str]) -> tuple[int, str | None, int]:
    i, record, cfg, tmp = job
    try:
        pre = load_fundus(record, cfg.image_size, cfg.crop_fov, cfg.normalize, (cfg.lesion,), cfg.fast_decode)
        out = image_patches(pre.image, pre.masks.get(cfg.lesion), cfg, cfg.seed + i)
        np.savez(Path(tmp) / "shards" / f"{i:06d}.npz", **out)
        view = cv2.resize(pre.image, (cfg.view_size, cfg.view_size), interpolation=cv2.INTER_AREA)
        Image.fromarray(view).save(Path(tmp) / "views" / f"{i:06d}.png")
        return i, None, len(out["labels"])
    except (DataFormatError, OSError, ValueError) as e:
        msg = str(e) if str(record.image_path) in str(e) else f"{record.image_path}: {e}"
        return i, msg, 0


class ExudatePatches:
    """A built patch cache (see the module docstring); arrays are memory-mapped.

    Attributes:
        patches: ``N x P x P x 3`` uint8.  labels: ``N`` int8 (0 healthy, 1 exudate, -1 unknown).
        image: ``N`` int32 index into ``images``.  centre: ``N x 2`` (y, x) in the preprocessed image.
        kind: ``N`` uint8 (0 centred, 1 grid).  images: one dict per image (id, patient, split, path, ...).
        index: the parsed ``index.json``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.index = index = json.loads((self.path / "index.json").read_text())
        self.config = ExudatePatchConfig(**index["config"])
        self.images: list[dict] = index["images"]
        self.skipped: list[str] = index["skipped"]
        for name in ARRAYS:
            setattr(self, name, np.load(self.path / f"{name}.npy", mmap_mode="r"))

    def __len__(self) -> int:
        return len(self.labels)

    def view(self, image: int) -> np.ndarray:
        """The stored preview (``view_size`` square RGB) of image ``image``."""
        return np.asarray(Image.open(self.path / "views" / f"{image:06d}.png").convert("RGB"))

    def tensor(self, idx: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Patches ``idx`` as a float ``B x 3 x P x P`` tensor in [0, 1]."""
        idx = np.asarray(idx, dtype=np.int64)
        order = np.argsort(idx, kind="stable")  # memmap reads are faster in order
        arr = np.empty((len(idx), *self.patches.shape[1:]), np.uint8)
        arr[order] = self.patches[idx[order]]
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255)

    @classmethod
    def build(
        cls,
        records: Sequence[FundusRecord],
        config: ExudatePatchConfig | None = None,
        cache_dir: str | Path | None = None,
        num_workers: int = 0,
        on_error: OnError = "raise",
        progress: bool = True,
    ) -> ExudatePatches:
        """Return the cache for ``records``/``config``, building it first if needed.

        Raises:
            DataFormatError: a photograph or mask that cannot be read (with ``on_error="raise"``).
        """
        if not records:
            raise ConfigError("no images to cut patches from (the dataset and its reader_args give none)")
        config = config or ExudatePatchConfig()
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        final = cache_dir / f"exudate-{cache_key(records, config)}"
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
        cfg: ExudatePatchConfig,
        num_workers: int,
        on_error: OnError,
        progress: bool,
    ) -> None:
        start = time.perf_counter()
        (tmp / "shards").mkdir()
        (tmp / "views").mkdir()
        jobs = [(i, r, cfg, str(tmp)) for i, r in enumerate(records)]
        counts, errors = run_image_jobs(_process, jobs, num_workers, on_error, "Cutting exudate patches", progress)
        keep = [i for i in range(len(records)) if i not in errors]
        total = sum(counts[i] for i in keep)
        p = cfg.patch_size
        patches = create_array(tmp / "patches.npy", (total, p, p, 3), np.uint8)  # a full disk: ENOSPC, not SIGBUS
        out = {
            "patches": patches,
            "labels": np.empty(total, np.int8),
            "image": np.empty(total, np.int32),
            "centre": np.empty((total, 2), np.int32),
            "kind": np.empty(total, np.uint8),
        }
        images = []
        pos = 0
        for new, i in enumerate(keep):
            with np.load(tmp / "shards" / f"{i:06d}.npz") as shard:
                n = len(shard["labels"])
                for name in ("patches", "labels", "centre", "kind"):
                    out[name][pos : pos + n] = shard[name]
            out["image"][pos : pos + n] = new
            pos += n
            os.replace(tmp / "views" / f"{i:06d}.png", tmp / "views" / f"{new:06d}.png.new")
            meta = record_meta(records[i])
            meta["annotated"] = cfg.lesion in records[i].masks
            images.append(meta)
        for f in (tmp / "views").glob("*.png"):
            f.unlink()  # views of skipped images
        for f in (tmp / "views").glob("*.png.new"):
            f.rename(f.with_suffix(""))
        out["patches"].flush()
        del out["patches"]
        for name in ("labels", "image", "centre", "kind"):
            np.save(tmp / f"{name}.npy", out[name])
        shutil.rmtree(tmp / "shards")
        index = {
            "config": asdict(cfg),
            "images": images,
            "skipped": [errors[i] for i in sorted(errors)],
            "build_seconds": time.perf_counter() - start,
        }
        (tmp / "index.json").write_text(json.dumps(index, indent=1))


def group_by_image(items: np.ndarray, image: np.ndarray, images: Sequence[int]) -> dict[int, np.ndarray]:
    """``{i: items whose image is i}`` for every ``i`` in ``images``, in their order in ``items``.

    One sort, so O(n log n) in the pool size, not one scan of the pool per image (a clinic's pool
    holds millions of grid patches of tens of thousands of images).
    """
    items = np.asarray(items, dtype=np.int64)
    owner = np.asarray(image)[items]
    order = np.argsort(owner, kind="stable")  # stable: ascending items stay ascending within an image
    items, owner = items[order], owner[order]
    ids = np.asarray(list(images), dtype=np.int64)
    lo, hi = np.searchsorted(owner, ids, "left"), np.searchsorted(owner, ids, "right")
    return {int(i): items[a:b] for i, a, b in zip(ids, lo, hi, strict=True)}


def dihedral(x: torch.Tensor) -> torch.Tensor:
    """The 8 dihedral variants of a batch (paper 002: "7 new label-preserving samples using a
    combination of flipping and 90, 180 and 270 degree rotations").

    Shapes: ``B x C x H x W`` (square) -> ``8B x C x H x W``, variant-major (the originals come first).
    """
    rots = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
    return torch.cat(rots + [r.flip(3) for r in rots])


def balance(idx: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """Subsample the larger class of ``idx`` so that both classes have the same count (sorted output)."""
    idx = np.asarray(idx)
    pos, neg = idx[labels[idx] == EXUDATE], idx[labels[idx] == HEALTHY]
    n = min(len(pos), len(neg))
    rng = np.random.default_rng(seed)
    if len(pos) > n:
        pos = rng.choice(pos, n, replace=False)
    if len(neg) > n:
        neg = rng.choice(neg, n, replace=False)
    return np.sort(np.concatenate([pos, neg]))
