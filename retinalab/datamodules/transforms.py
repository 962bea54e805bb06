"""Albumentations pipelines used by the datamodules.

Albumentations keeps its own random state, independent of ``seed_everything``: every pipeline here
takes a ``seed`` (default: derived from torch's initial seed, which ``seed_everything`` sets), so the
same config and seed give the same augmentations and the same run.
"""

from __future__ import annotations

import albumentations as A
import cv2
import torch


def _seed(seed: int | None) -> int:
    return int(torch.initial_seed() % 2**32) if seed is None else seed


def patch_train_transform(size: int, pad: int = 2, seed: int | None = None) -> A.Compose:
    """Paper 000 appendix A: "random cropping and flipping" of the 32x32 training patches
    (reflect-pad by ``pad`` pixels, random crop back, horizontal and vertical flips)."""
    return A.Compose(
        [
            A.PadIfNeeded(min_height=size + 2 * pad, min_width=size + 2 * pad, border_mode=cv2.BORDER_REFLECT_101),
            A.RandomCrop(height=size, width=size),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
        ],
        seed=_seed(seed),
    )


def patch_table5_transform(size: int, seed: int | None = None) -> A.Compose:
    """Paper 000 Table 5 (ResNet34 baseline): rotations of 0-180 degrees, left-right and up-down
    flips, horizontal and vertical shifts of up to 30%."""
    return A.Compose(
        [
            A.Affine(rotate=(0, 180), translate_percent={"x": (-0.3, 0.3), "y": (-0.3, 0.3)}, border_mode=cv2.BORDER_REFLECT_101, p=1.0),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
        ],
        seed=_seed(seed),
    )


def image_train_transform(size: int, seed: int | None = None) -> A.Compose:
    """Whole-image augmentation for grading/segmentation: flips, rotation, mild colour jitter."""
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.Rotate(limit=180, border_mode=cv2.BORDER_CONSTANT, p=0.5),
            A.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02, p=0.5),
        ],
        seed=_seed(seed),
    )
