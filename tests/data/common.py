"""Drawing helpers for the fake dataset layouts (deliberately simple, independent of retinalab.synthetic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (96, 64)  # width, height: small but >= 64 px, 3:2 like IDRiD


def fundus(size: tuple[int, int] = SIZE, seed: int = 0) -> np.ndarray:
    """An orange disc on black, with a little noise: enough for the field-of-view crop."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    inside = (xx - w / 2) ** 2 + (yy - h / 2) ** 2 <= (0.48 * h) ** 2
    img = np.zeros((h, w, 3), np.uint8)
    img[inside] = (200, 90, 40)
    img = np.clip(img.astype(int) + rng.integers(-10, 10, img.shape) * inside[..., None], 0, 255).astype(np.uint8)
    return img


def save_jpg(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=95)
    return path


def square_mask(size: tuple[int, int], y: int, x: int, r: int = 2) -> np.ndarray:
    w, h = size
    m = np.zeros((h, w), bool)
    m[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1] = True
    return m


def save_mask(path: Path, mask: np.ndarray, style: str = "red") -> Path:
    """Write a mask as red RGB (IDRiD), palette, 0/1 grey or 0/255 grey."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if style == "red":
        rgb = np.zeros((*mask.shape, 3), np.uint8)
        rgb[mask, 0] = 255
        Image.fromarray(rgb).save(path)
    elif style == "palette":
        im = Image.fromarray(mask.astype(np.uint8), mode="L").convert("P")
        im.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
        im.save(path)
    elif style == "binary":
        Image.fromarray(mask.astype(np.uint8)).save(path)
    else:
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return path
