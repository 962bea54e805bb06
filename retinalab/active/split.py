"""One run's view of the patch cache: the pool built from the dataset (:func:`open_pool`), images split by
patient, the oracle's pool of training patches, the balanced validation and test patches, and the
patches of each image (:func:`split_pool`)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from ..datamodules.splits import split_indices
from ..datasets import read_dataset
from ..utils.errors import ConfigError
from .pool import CENTRED, EXUDATE, GRID, ExudatePatches, balance, group_by_image

if TYPE_CHECKING:
    from lightning_fabric import Fabric

    from .options import RunOptions

log = logging.getLogger(__name__)


def open_pool(o: RunOptions, fabric: Fabric) -> ExudatePatches:
    """The patch pool of the run with options ``o``: the dataset read (without the images a simulated
    oracle cannot answer for: no mask of the lesion), its patches cut once into the cache by rank 0 while
    the other ranks wait, then opened by every rank."""
    records = read_dataset(o.dataset, o.root, on_error=o.on_error, **(o.reader_args or {}))
    lesion = o.patches.lesion
    if o.oracle == "simulated":
        unannotated = [r for r in records if lesion not in r.masks]
        if unannotated:
            log.info(
                "leaving out %d images without a %s mask (the simulated oracle needs one)", len(unannotated), lesion
            )
        records = [r for r in records if lesion in r.masks]
    if not records:
        raise ConfigError(f"{o.dataset} at {o.root}: no images with a {lesion} mask (check reader_args)")
    build = dict(config=o.patches, cache_dir=o.cache_dir, num_workers=o.num_workers, on_error=o.on_error)
    if fabric.global_rank == 0:
        ExudatePatches.build(records, progress=o.progress, **build)
    fabric.barrier()
    return ExudatePatches.build(records, progress=False, **build)


@dataclass
class PoolSplit:
    """What the loop draws from (``ActiveLearning.data`` after set-up).

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
    split = split_indices(groups, val_size, test_size, seed, strata=has_ex.tolist(), flag="--")
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
