"""Decoding fundus photographs and lesion masks, with clear errors for files that do not decode."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..datasets.base import DataFormatError

# Fundus photographs are large; they are trusted local files, not web input.
Image.MAX_IMAGE_PIXELS = None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) read from the header only.

    Raises:
        DataFormatError: if the file is not an image.
    """
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataFormatError(f"{path}: not a readable image ({e})") from e


def read_image(path: Path, min_side: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an RGB photograph.

    JPEGs are decoded with reduced-size DCT scaling (PIL ``draft``) when ``min_side`` allows it:
    decoding a 4288x2848 IDRiD image at 1/2 or 1/4 scale is faster than a full decode
    (docs/benchmarks.md, "Patch cache") and loses nothing once the image is resized to ~1024 px anyway.

    Args:
        path: the image file.
        min_side: smallest side the decoded array must keep (``None``: full resolution).

    Returns:
        ``(array HxWx3 uint8, (full_width, full_height))``.

    Raises:
        DataFormatError: naming the file if it cannot be decoded.
    """
    try:
        with Image.open(path) as im:
            full = im.size
            if min_side is not None and im.format == "JPEG":
                scale = min_side / min(full)
                if scale < 1:
                    im.draft("RGB", (math.ceil(full[0] * scale), math.ceil(full[1] * scale)))
            im = im.convert("RGB")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataFormatError(f"{path}: cannot decode image ({e})") from e
    return arr, full


def read_mask(path: Path, expected_size: tuple[int, int], image_path: Path | None = None) -> np.ndarray:
    """Read a lesion mask as a boolean array.

    Masks come as red RGB (IDRiD), palette, 8-bit or 0/1 images; a pixel is positive when any
    colour channel is non-zero (an alpha channel is ignored). OpenCV decodes TIFF/PNG masks straight
    into an array (faster than PIL for large RGB TIFFs); PIL is the fallback.

    Args:
        path: the mask file.
        expected_size: ``(width, height)`` of the photograph it annotates.
        image_path: the photograph, named in the error message.

    Raises:
        DataFormatError: if it does not decode or its size differs from the photograph's.
    """
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if Path(path).is_file() else None
    if arr is None:
        try:
            with Image.open(path) as im:
                if im.mode == "P":
                    im = im.convert("RGB")
                arr = np.asarray(im)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise DataFormatError(f"{path}: cannot decode mask ({e})") from e
    if (arr.shape[1], arr.shape[0]) != tuple(expected_size):
        raise DataFormatError(
            f"{path}: mask is {arr.shape[1]}x{arr.shape[0]} but its image "
            f"{image_path or ''} is {expected_size[0]}x{expected_size[1]}"
        )
    if arr.ndim == 3:
        channels = min(arr.shape[2], 3)  # drop alpha
        # OR of the channels: ~10x faster than arr.max(axis=2), numpy's slow small-axis reduce
        out = arr[..., 0] > 0
        for c in range(1, channels):
            out |= arr[..., c] > 0
        return out
    return arr > 0
