"""Image-level scores aggregated from patch predictions (paper 000, section 2).

score_i = sum_j sigmoid(l_ij) over the patches j of image i, l_ij the diseased-vs-healthy logit.
The image is diseased when any of its patches is. torchmetrics has no metric that groups
predictions by image before scoring, hence this one; it is synced across DDP ranks through its
``cat`` states, and de-duplicates patches that a distributed sampler served twice.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc


class ImageLevelScores(Metric):
    """Collects (image, patch, probability, label) and aggregates them per image.

    ``compute()`` returns the image-level AUROC; :meth:`scores` returns the per-image scores and labels.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("image_index", default=[], dist_reduce_fx="cat")
        self.add_state("patch_index", default=[], dist_reduce_fx="cat")
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(
        self, probs: torch.Tensor, target: torch.Tensor, image_index: torch.Tensor, patch_index: torch.Tensor
    ) -> None:
        """Args: ``probs`` (B,) p(diseased); ``target`` (B,) 0/1 patch labels; indices (B,) ints."""
        self.probs.append(probs.detach().float().flatten())
        self.target.append(target.detach().long().flatten())
        self.image_index.append(image_index.detach().long().flatten())
        self.patch_index.append(patch_index.detach().long().flatten())

    def _cat(self, x) -> torch.Tensor:
        if isinstance(x, list):
            return torch.cat(x) if x else torch.zeros(0, dtype=torch.long, device=self.device)  # never updated
        return x

    def scores(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(image_indices, scores, labels)``: one entry per image, sorted by image index."""
        img, patch = self._cat(self.image_index), self._cat(self.patch_index)
        probs, target = self._cat(self.probs), self._cat(self.target)
        key = img * (int(patch.max()) + 1 if patch.numel() else 1) + patch
        _, first = _unique_first(key)
        img, probs, target = img[first], probs[first], target[first]
        images, inverse = torch.unique(img, return_inverse=True)
        score = torch.zeros(len(images), dtype=probs.dtype, device=probs.device).scatter_add_(0, inverse, probs)
        label = torch.zeros(len(images), dtype=torch.long, device=probs.device).scatter_reduce_(
            0, inverse, target, "amax"
        )
        return images, score, label

    def per_image(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(image_indices, probs, targets)``: ``probs`` and ``targets`` are images x patches in grid
        order (NaN / -1 for patches never seen), one row per image sorted by image index."""
        img, patch = self._cat(self.image_index), self._cat(self.patch_index)
        probs, target = self._cat(self.probs), self._cat(self.target)
        if img.numel() == 0:
            return img, probs.view(0, 0), target.view(0, 0)
        _, first = _unique_first(
            img * (int(patch.max()) + 1) + patch
        )  # a patch served twice: its first copy, as scores()
        img, patch, probs, target = img[first], patch[first], probs[first], target[first]
        images, row = torch.unique(img, return_inverse=True)
        n = int(patch.max()) + 1
        p = torch.full((len(images), n), float("nan"), device=probs.device)
        t = torch.full((len(images), n), -1, dtype=torch.long, device=probs.device)
        p[row, patch] = probs
        t[row, patch] = target
        return images, p, t

    def compute(self) -> torch.Tensor:
        _, score, label = self.scores()
        return image_auroc(score, label)


def to_unit(score: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Scale non-negative image scores into [0, 1] by their maximum; returns (scaled, scale).

    torchmetrics' binary metrics pass predictions outside [0, 1] through a sigmoid, which saturates
    sums of 64 patch probabilities (sigmoid(30) == 1.0 in float32) into ties and an AUROC of 0.5.
    Dividing by the maximum keeps the ranking exactly.
    """
    scale = float(score.max().clamp_min(1e-12)) if score.numel() else 1.0
    return (score / scale).clamp(0, 1), scale


def image_auroc(score: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """AUROC of image scores (sums of patch probabilities), NaN when only one class is present."""
    if label.unique().numel() < 2:
        return torch.tensor(float("nan"), device=score.device)
    return binary_auroc(to_unit(score)[0], label)


def _unique_first(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique keys and the index of the first occurrence of each."""
    uniq, inverse = torch.unique(key, return_inverse=True)
    first = torch.full((len(uniq),), len(key), dtype=torch.long, device=key.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(key), device=key.device), "amin")
    return uniq, first
