"""The datasets behind :class:`~retinalab.datamodules.patch.PatchDataModule`: patches, whole cached
images, all patches of one image for prediction, and a plain folder of photographs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..datasets import DataFormatError, FundusRecord
from ..datasets.base import IMAGE_SUFFIXES
from ..preprocessing import PatchCache, PatchCacheConfig, load_fundus
from ..preprocessing.patches import UNKNOWN
from ..utils.errors import InputMissingError

log = logging.getLogger(__name__)


class PatchDataset(Dataset):
    """All patches of the given cache rows.

    Each sample is a dict: ``image`` (3 x s x s float in [0, 1]), ``label`` (int64; -1 when hidden
    or unknown), ``image_index`` (row in the cache), ``patch_index`` (position in the grid),
    ``fraction`` (lesion-pixel fraction; 0 when hidden).

    Args:
        cache: the patch cache.
        rows: cache rows (images) to serve.
        transform: albumentations transform applied to the HxWx3 uint8 patch.
        hide_labels: serve ``label = -1`` (unlabelled training data).
        strong_transform: a second pipeline applied to the same patch, served as ``image_strong``
            (FixMatch's strongly augmented view; ``image`` is then the weak view).
    """

    def __init__(
        self,
        cache: PatchCache,
        rows: np.ndarray,
        transform: Any = None,
        hide_labels: bool = False,
        strong_transform: Any = None,
    ) -> None:
        self.cache = cache
        self.rows = np.asarray(rows, dtype=np.int64)
        self.g = cache.patches_per_image
        self.transform = transform
        self.hide_labels = hide_labels
        self.strong_transform = strong_transform

    def __len__(self) -> int:
        return len(self.rows) * self.g

    def __getitem__(self, k: int) -> dict[str, Any]:
        i, j = int(self.rows[k // self.g]), k % self.g
        raw = np.array(self.cache.patches[i, j])  # copy: memmaps are read-only
        patch = self.transform(image=raw)["image"] if self.transform is not None else raw
        label = -1 if self.hide_labels else int(self.cache.labels[i, j])
        fraction = 0.0 if self.hide_labels else float(self.cache.fractions[i, j])
        item = {"image": _tensor(patch), "label": label, "image_index": i, "patch_index": j, "fraction": fraction}
        if self.strong_transform is not None:
            item["image_strong"] = _tensor(self.strong_transform(image=raw)["image"])
        return item


def _tensor(patch: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> 3 x H x W float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1).float().div_(255.0)


class CachedImages(Dataset):
    """Whole preprocessed images from the cache (``thumb_size`` px) with their image-level label.

    Each sample looks like a one-patch image to the patch tasks: ``image`` (3 x t x t float),
    ``label`` (1 any lesion, 0 none; -1 when hidden), ``image_index``, ``patch_index`` = 0.
    """

    def __init__(self, cache: PatchCache, rows: np.ndarray, transform: Any = None, hide_labels: bool = False) -> None:
        self.cache, self.rows, self.transform, self.hide_labels = (
            cache,
            np.asarray(rows, dtype=np.int64),
            transform,
            hide_labels,
        )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> dict[str, Any]:
        i = int(self.rows[k])
        img = np.array(self.cache.thumbs[i])
        if self.transform is not None:
            img = self.transform(image=img)["image"]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0),
            "label": -1 if self.hide_labels else int(self.cache.image_labels[i]),
            "image_index": i,
            "patch_index": 0,
            "fraction": 0.0,
        }


class CachedImagePatches(Dataset):
    """One item per cached image: all its patches, for prediction and heatmaps.

    Item: ``image`` (G x 3 x s x s float), ``image_id``, ``thumb`` (t x t x 3 uint8), ``mask``
    (t x t bool union lesion mask, or ``None`` when the image has no pixel annotation).
    """

    def __init__(
        self, cache: PatchCache, rows: np.ndarray, whole_image: bool = False, skip: set[str] | None = None
    ) -> None:
        if skip:
            rows = [i for i in rows if cache.images[int(i)]["image_id"] not in skip]
        self.cache, self.rows, self.whole_image = cache, np.asarray(rows, dtype=np.int64), whole_image

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> dict[str, Any]:
        i = int(self.rows[k])
        source = self.cache.thumbs[i][None] if self.whole_image else self.cache.patches[i]
        patches = torch.from_numpy(np.array(source)).permute(0, 3, 1, 2).float().div_(255.0)
        known = self.cache.image_labels[i] != UNKNOWN and bool(self.cache.images[i]["annotated"])
        return {
            "image": patches,
            "image_id": self.cache.images[i]["image_id"],
            "thumb": np.array(self.cache.thumbs[i]),
            "mask": np.array(self.cache.mask_thumbs[i]).astype(bool) if known else None,
        }


def folder_images(folder: str | Path) -> list[Path]:
    """The photographs under ``folder`` (recursive; jpg/jpeg/png/tif/tiff/bmp, hidden files left out), sorted.

    Raises:
        InputMissingError: ``folder`` is not a folder or holds no photograph.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputMissingError(f"predict_folder={str(folder)!r} is not a folder")
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
    others = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        log.warning("predict_folder: ignoring %d non-image file(s), e.g. %s", len(others), others[0])
    if not files:
        raise InputMissingError(
            f"predict_folder={str(folder)!r} holds no photograph ({', '.join(IMAGE_SUFFIXES)}, in it or below)"
        )
    return files


class FolderImagePatches(Dataset):
    """One item per photograph of a plain folder (recursive; jpg/jpeg/png/tif/tiff/bmp, any size).

    Preprocessed and patched like the cache, on the fly. A file that fails to decode, or shows no
    field of view, yields ``{"image_id": ..., "error": message}`` instead of stopping the run. Files
    whose id (path relative to ``folder``) is in ``skip`` are left out (a resumed prediction).
    """

    def __init__(
        self, folder: str | Path, config: PatchCacheConfig, whole_image: bool = False, skip: set[str] | None = None
    ) -> None:
        self.whole_image = whole_image
        self.folder = Path(folder).expanduser()
        self.files = folder_images(self.folder)
        if skip:
            self.files = [p for p in self.files if p.relative_to(self.folder).as_posix() not in skip]
        self.config = config

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, k: int) -> dict[str, Any]:
        path = self.files[k]
        image_id = path.relative_to(self.folder).as_posix()
        cfg = self.config
        try:
            pre = load_fundus(
                FundusRecord(image_id, path), cfg.grid.image_size, cfg.crop_fov, cfg.normalize, None, cfg.fast_decode
            )
        except DataFormatError as e:
            return {"image_id": image_id, "error": str(e)}
        t = cfg.thumb_size
        thumb = cv2.resize(pre.image, (t, t), interpolation=cv2.INTER_AREA)
        patches = thumb[None] if self.whole_image else cfg.grid.extract(pre.image)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2).float().div_(255.0),
            "image_id": image_id,
            "thumb": thumb,
            "mask": None,
        }
