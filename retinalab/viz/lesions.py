"""Lesion maps over a fundus photograph, one colour per lesion (paper 001's qualitative figures)."""

from __future__ import annotations

import numpy as np

#: RGB colour per lesion: microaneurysms, haemorrhages, hard exudates, soft exudates
LESION_COLOURS = {"MA": (0, 255, 0), "HE": (255, 0, 0), "EX": (255, 255, 0), "SE": (0, 160, 255)}


def lesion_overlay(
    image: np.ndarray, maps: np.ndarray, lesions: list[str] | tuple[str, ...], alpha: float = 0.6
) -> np.ndarray:
    """Blend per-lesion maps in [0, 1] over an RGB uint8 image.

    Args:
        image: ``H x W x 3`` uint8.
        maps: ``L x H x W`` probabilities (masks or attention maps), resized to the image beforehand.
        lesions: the L lesion names (colours from :data:`LESION_COLOURS`).
        alpha: opacity at probability 1.

    Returns:
        ``H x W x 3`` uint8; each pixel takes the colour of its most probable lesion, with opacity
        ``alpha`` x that probability.
    """
    if maps.shape[1:] != image.shape[:2]:
        raise ValueError(f"maps {maps.shape[1:]} and image {image.shape[:2]} differ in size")
    colours = np.array([LESION_COLOURS.get(name, (255, 0, 255)) for name in lesions], np.float32)
    top = maps.argmax(0)
    strength = np.clip(maps.max(0), 0, 1)[..., None] * alpha
    out = image.astype(np.float32) * (1 - strength) + colours[top] * strength
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
