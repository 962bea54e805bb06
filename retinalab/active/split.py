"""One run's view of the patch cache: images split by patient, the oracle's pool of training patches,
the balanced validation and test patches, and the patches of each image."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np

from ..datamodules.splits import split_indices
from .pool import CENTRED, EXUDATE, GRID, ExudatePatches, balance, group_by_image


@dataclass
class PoolSplit:
    """What the loop draws from (attributes of :class:`~retinalab.active.ActiveLearning` after set-up).

    Attributes:
        split: image indices of the ``train`` / ``val`` / ``test`` patients.
        has_exudate: per image, whether any of its patches is an exudate patch.
        eval_items: ``val`` / ``test`` patches of those patients: centred ones balanced per class (the
            paper's), or every labelled grid patch (``eval_kind: grid``: exudates as rare as in the photographs).
        pool_items: the training patches the oracle may label (centred ones balanced per class, or grid ones).
        items_of_image: training image -> its pool items.
        grid_of_image: every image -> its grid patches (Algorithm 2's "patchify", heatmaps).
        tracked: training images whose interestingness is recorded every round (paper 002, Figure 3),
            half with exudates and half without.
    """

    split: dict[str, list[int]]
    has_exudate: np.ndarray
    eval_items: dict[str, np.ndarray]
    pool_items: np.ndarray
    items_of_image: dict[int, np.ndarray]
    grid_of_image: dict[int, np.ndarray]
    tracked: list[int]

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def split_pool(
    pool: ExudatePatches,
    val_size: float,
    test_size: float,
    seed: int,
    pool_kind: Literal["centred", "grid"],
    track_images: int,
    eval_kind: Literal["centred", "grid"] = "centred",
) -> PoolSplit:
    """Split ``pool``'s images by patient (stratified by whether they hold exudates) with ``seed``."""
    labels, kind, image = np.asarray(pool.labels), np.asarray(pool.kind), np.asarray(pool.image)
    n_img = len(pool.images)
    has_ex = np.zeros(n_img, np.int64)
    np.maximum.at(has_ex, image, (labels == EXUDATE).astype(np.int64))
    groups = [img["group"] for img in pool.images]
    split = split_indices(groups, val_size, test_size, seed, strata=has_ex.tolist())
    has_exudate = has_ex.astype(bool)
    in_split = {name: np.isin(image, ids) for name, ids in split.items()}
    centred = kind == CENTRED
    if eval_kind == "grid":
        eval_items = {name: np.flatnonzero(in_split[name] & (kind == GRID) & (labels >= 0)) for name in ("val", "test")}
    else:
        eval_items = {
            name: balance(np.flatnonzero(in_split[name] & centred & (labels >= 0)), labels, seed + i)
            for i, name in enumerate(("val", "test"))
        }
    pool_items = np.flatnonzero(in_split["train"] & (kind == (CENTRED if pool_kind == "centred" else GRID)))
    if pool_kind == "centred":
        pool_items = balance(pool_items, labels, seed + 2)
    rng = np.random.default_rng(seed + 3)
    train = np.array(split["train"])
    order = [train[~has_exudate[train]], train[has_exudate[train]]]
    tracked = sorted(int(i) for part in order for i in rng.permutation(part)[: math.ceil(track_images / 2)])[
        :track_images
    ]
    return PoolSplit(
        split=split,
        has_exudate=has_exudate,
        eval_items=eval_items,
        pool_items=pool_items,
        items_of_image=group_by_image(pool_items, image, split["train"]),
        grid_of_image=group_by_image(np.flatnonzero(kind == GRID), image, range(n_img)),
        tracked=tracked,
    )
