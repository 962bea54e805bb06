"""Paper 000's preprocessing: crop to the circular field of view, resize, normalise by the maximum.

Section 3 of paper 000: "We resized the original images to 1024x1024 and normalized them by the
maximum intensity value in each image." Fundus cameras leave a black surround around a circular (often
top/bottom-truncated) field of view (FOV); we crop its bounding box, pad it to a square so that the
disc stays round, then resize.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from ..datasets.base import LESIONS, DataFormatError, FundusRecord
from .io import read_image, read_mask


@dataclass(frozen=True)
class FovBox:
    """Square crop window in *relative* coordinates (fractions of width/height), may exceed [0, 1]."""

    x0: float
    y0: float
    x1: float
    y1: float

    def apply(self, arr: np.ndarray, size: int, interpolation: int) -> np.ndarray:
        """Crop ``arr`` (HxW or HxWxC, any resolution) to the box, zero-pad outside, resize to ``size``."""
        h, w = arr.shape[:2]
        x0, x1 = round(self.x0 * w), round(self.x1 * w)
        y0, y1 = round(self.y0 * h), round(self.y1 * h)
        pad = [(max(0, -y0), max(0, y1 - h)), (max(0, -x0), max(0, x1 - w))] + [(0, 0)] * (arr.ndim - 2)
        crop = arr[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)]
        if any(p != (0, 0) for p in pad):
            crop = np.pad(crop, pad)
        if crop.shape[0] != size or crop.shape[1] != size:
            if crop.dtype == bool:
                crop = crop.astype(np.uint8)
            crop = cv2.resize(crop, (size, size), interpolation=interpolation)
        return crop


def find_fov(image: np.ndarray, threshold: float = 0.1, min_fraction: float = 0.05) -> FovBox:
    """Locate the field of view of a fundus photograph.

    Pixels brighter than ``threshold`` x the 99th percentile of the red channel (the brightest
    channel of a fundus) form the FOV; rows/columns where at least 1% of pixels are in it give
    the bounding box, which is widened to a centred square.

    Args:
        image: HxWx3 uint8.
        threshold: fraction of the robust maximum below which a pixel is background.
        min_fraction: the FOV must cover at least this fraction of the image.

    Raises:
        ValueError: if no FOV is found (a black frame or not a fundus photograph).
    """
    h, w = image.shape[:2]
    small_scale = 256 / max(h, w)
    small = (
        cv2.resize(
            image, (max(1, round(w * small_scale)), max(1, round(h * small_scale))), interpolation=cv2.INTER_AREA
        )
        if small_scale < 1
        else image
    )
    lum = small.max(axis=2).astype(np.float32)
    hi = float(np.percentile(lum, 99))
    if hi <= 0:
        raise ValueError("image is black: no field of view")
    fov = lum > threshold * hi
    if fov.mean() < min_fraction:
        raise ValueError(f"field of view covers only {fov.mean():.1%} of the image")
    sh, sw = fov.shape
    rows = np.flatnonzero(fov.mean(axis=1) > 0.01)
    cols = np.flatnonzero(fov.mean(axis=0) > 0.01)
    y0, y1 = rows[0] / sh, (rows[-1] + 1) / sh
    x0, x1 = cols[0] / sw, (cols[-1] + 1) / sw
    # square in pixels: widen the shorter side around its centre
    side = max((y1 - y0) * h, (x1 - x0) * w)
    cy, cx = (y0 + y1) / 2 * h, (x0 + x1) / 2 * w
    return FovBox((cx - side / 2) / w, (cy - side / 2) / h, (cx + side / 2) / w, (cy + side / 2) / h)


def normalize_max(image: np.ndarray) -> np.ndarray:
    """Scale so the image's maximum intensity becomes 255 (paper 000), keeping uint8 storage."""
    m = int(image.max())
    if m == 0 or m == 255:
        return image
    return np.clip(image.astype(np.float32) * (255.0 / m) + 0.5, 0, 255).astype(np.uint8)


def resize_mask(mask: np.ndarray, box: FovBox, size: int, mode: Literal["any", "fraction"] = "any") -> np.ndarray:
    """Crop/resize a boolean mask.

    ``any`` (bool): no lesion pixel vanishes. Area interpolation of a 0/1 image is positive wherever a
    source lesion pixel contributes, so a microaneurysm of a few pixels at 4288 px still marks its patch
    at 1024 px (paper 000 labels a patch diseased with "at least 1 overlapping pixel"); the lesion area
    grows (every boundary pixel counts whole). ``fraction`` (float32 in [0, 1]): the share of each output
    pixel that is lesion, so the lesion area is kept (what pixel metrics weigh, as if scored at the
    original resolution, which is how the IDRiD challenge scores).
    """
    f = box.apply(mask.astype(np.float32), size, cv2.INTER_AREA if mask.shape[0] > size else cv2.INTER_NEAREST)
    return np.clip(f, 0.0, 1.0) if mode == "fraction" else f > 0


@dataclass(frozen=True)
class Preprocessed:
    """A preprocessed photograph: ``image`` size x size x 3 uint8, ``masks`` name -> size x size bool."""

    image: np.ndarray
    masks: dict[str, np.ndarray]
    fov: FovBox
    original_size: tuple[int, int]

    def lesion_union(self, lesions: tuple[str, ...] = LESIONS) -> np.ndarray | None:
        """Union of the lesion masks (never the optic disc), or ``None`` when none is annotated."""
        present = [self.masks[k] for k in lesions if k in self.masks]
        if not present:
            return None
        return np.logical_or.reduce(present)


def load_fundus(
    record: FundusRecord,
    size: int = 1024,
    crop_fov: bool = True,
    normalize: bool = True,
    structures: tuple[str, ...] | None = LESIONS,
    fast_decode: bool = True,
    mask_mode: Literal["any", "fraction"] = "any",
) -> Preprocessed:
    """Decode a record's photograph and masks and apply paper 000's preprocessing.

    Args:
        record: from a dataset reader.
        size: output side in pixels (paper 000: 1024).
        crop_fov: crop to the field of view first.
        normalize: divide by the image's maximum intensity.
        structures: which masks to read (``None``: none). Annotated-but-absent masks are all-False.
        fast_decode: reduced-size DCT decoding for JPEGs (see :func:`read_image`).
        mask_mode: ``any`` (bool masks) or ``fraction`` (float lesion fraction per pixel): :func:`resize_mask`.

    Raises:
        DataFormatError: a file that does not decode, a mask of the wrong size, no field of view.
    """
    image, full = read_image(Path(record.image_path), min_side=size if fast_decode else None)
    try:
        box = find_fov(image) if crop_fov else FovBox(0.0, 0.0, 1.0, 1.0)
    except ValueError as e:
        raise DataFormatError(f"{record.image_path}: {e} (is this a fundus photograph?)") from e
    interp = cv2.INTER_AREA if min(image.shape[:2]) > size else cv2.INTER_CUBIC
    out = box.apply(image, size, interp)
    if normalize:
        out = normalize_max(out)
    masks: dict[str, np.ndarray] = {}
    for name in structures or ():
        if name not in record.masks:
            continue
        path = record.masks[name]
        if path is None:
            masks[name] = np.zeros((size, size), dtype=np.float32 if mask_mode == "fraction" else bool)
        else:
            masks[name] = resize_mask(read_mask(Path(path), full, record.image_path), box, size, mask_mode)
    return Preprocessed(out, masks, box, full)


def stack_masks(
    masks: Mapping[str, np.ndarray], size: int, lesions: tuple[str, ...] = LESIONS, dtype: Any = np.uint8
) -> tuple[np.ndarray, np.ndarray]:
    """Stack lesion masks as L x H x W ``dtype`` (uint8 0/1, or float32 fractions) plus an L-vector
    saying which ones are annotated."""
    arr = np.zeros((len(lesions), size, size), dtype=dtype)
    known = np.zeros(len(lesions), dtype=bool)
    for i, k in enumerate(lesions):
        if k in masks:
            arr[i] = masks[k]
            known[i] = True
    return arr, known
