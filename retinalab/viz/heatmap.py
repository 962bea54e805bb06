"""Patch-score heatmaps (paper 000, section 4: "we overlaid the localized patch-level abnormality
scores spatially onto the image; and smoothed the resulting visualization with a Gaussian blur") and
their localisation quality against the lesion masks."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from matplotlib import colormaps
from torchmetrics.functional.classification import binary_auroc

from ..preprocessing import PatchGrid


def patch_heatmap(probs: np.ndarray, grid: PatchGrid, out_size: int, sigma: float | None = None) -> np.ndarray:
    """Spread patch probabilities over their patches and blur.

    Args:
        probs: ``G`` probabilities p(diseased), in the grid's row-major order.
        grid: the patch grid (overlapping patches are averaged where they overlap).
        out_size: side of the returned map (the map covers the preprocessed image).
        sigma: Gaussian blur std in *output* pixels; default half a patch.

    Returns:
        ``out_size x out_size`` float32 map in [0, 1].
    """
    s = out_size / grid.image_size
    acc = np.zeros((out_size, out_size), np.float32)
    cnt = np.zeros((out_size, out_size), np.float32)
    p = max(1, round(grid.patch_size * s))
    for prob, (_, _, y, x) in zip(probs, grid.coords(), strict=True):
        y0, x0 = round(y * s), round(x * s)
        acc[y0 : y0 + p, x0 : x0 + p] += float(prob)
        cnt[y0 : y0 + p, x0 : x0 + p] += 1
    heat = np.divide(acc, cnt, out=np.zeros_like(acc), where=cnt > 0)
    sigma = grid.patch_size * s / 2 if sigma is None else sigma
    if sigma > 0:
        heat = cv2.GaussianBlur(heat, (0, 0), sigma)
    return np.clip(heat, 0, 1)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """Blend a [0, 1] heatmap (resized to the image) over an RGB uint8 image."""
    if heat.shape != image.shape[:2]:
        heat = cv2.resize(heat, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    colour = (colormaps[cmap](heat)[..., :3] * 255).astype(np.float32)
    out = image.astype(np.float32) * (1 - alpha) + colour * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def side_by_side(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The photograph and its heatmap overlay next to each other (H x 2W x 3 uint8)."""
    return np.concatenate([image, overlay(image, heat, alpha)], axis=1)


def localisation_auroc(heat: np.ndarray, mask: np.ndarray, thresholds: int | None = None) -> float:
    """Pixel-level AUROC of a heatmap against a boolean lesion mask.

    Exact by default (``thresholds=None``): the maps are thumbnails (256 x 256 px in the shipped
    configs), so sorting their pixels costs little (less than torchmetrics' 200 linear bins), and those
    bins score 0.5 when every heat value lies below 0.005 however well they separate
    the lesions (FIELD-NOTES). ``thresholds`` (an int) bins as torchmetrics does, for bounded memory
    on large maps. Returns NaN when the mask is all-positive or all-negative.
    """
    if heat.shape != mask.shape:
        heat = cv2.resize(heat, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)
    m = torch.from_numpy(np.ascontiguousarray(mask.astype(bool))).flatten()
    if m.all() or not m.any():
        return float("nan")
    h = torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32)).flatten().clamp(0, 1)
    return float(binary_auroc(h, m.long(), thresholds=thresholds))
