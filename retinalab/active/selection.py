"""Selection rules of paper 002: Algorithm 1 (top-k patches by EGL), Algorithm 2 (the image with the
largest summed EGL), and random selection with the same budget (the baseline)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch


def select_top_k(scores: torch.Tensor, k: int, exclude: Iterable[int] = ()) -> list[int]:
    """Algorithm 1, lines 6-7: indices of the ``k`` highest scores, skipping already-labelled ones.

    Ties are broken by the lower index, so the choice is deterministic.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    mask = torch.ones(len(scores), dtype=torch.bool)
    excluded = [i for i in exclude if 0 <= i < len(scores)]
    mask[excluded] = False
    candidates = torch.nonzero(mask).flatten()
    order = torch.argsort(-scores[candidates], stable=True)[:k]
    return candidates[order].tolist()


def image_interestingness(phi: torch.Tensor, image_index: torch.Tensor) -> dict[int, float]:
    """Algorithm 2, line 5: sigma_image = sum of Phi over the image's patches."""
    phi = torch.as_tensor(phi, dtype=torch.float64).flatten()
    image_index = torch.as_tensor(image_index).flatten()
    if len(phi) != len(image_index):
        raise ValueError(f"{len(phi)} scores but {len(image_index)} image indices")
    images, inverse = torch.unique(image_index, return_inverse=True)
    sums = torch.zeros(len(images), dtype=torch.float64).scatter_add_(0, inverse, phi)
    return {int(i): float(s) for i, s in zip(images, sums, strict=True)}


def select_images(phi: torch.Tensor, image_index: torch.Tensor, n: int = 1, exclude: Iterable[int] = ()) -> list[int]:
    """Algorithm 2, lines 7-8: the ``n`` images with the largest summed EGL, not yet labelled."""
    sigma = image_interestingness(phi, image_index)
    excluded = set(exclude)
    ranked = sorted((i for i in sigma if i not in excluded), key=lambda i: (-sigma[i], i))
    return ranked[:n]


def select_random(pool_size: int, k: int, seed: int, exclude: Iterable[int] = ()) -> list[int]:
    """The baseline: ``k`` items drawn uniformly from the unlabelled pool with a seeded generator."""
    candidates = np.setdiff1d(np.arange(pool_size, dtype=np.int64), np.fromiter(exclude, dtype=np.int64))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(candidates, size=min(k, len(candidates)), replace=False).tolist())
