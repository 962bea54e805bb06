"""Reproducible train/val/test splits by patient (or image), and labelled-subset selection."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..utils.errors import ConfigError

if TYPE_CHECKING:
    from ..preprocessing import PatchCache

SplitMode = Literal["random", "official", "test_only"]


def target_count(size: float | int, n: int, name: str) -> int:
    """A count given as an int, or as a fraction (float < 1) of ``n``."""
    return _target(size, n, name)


def _target(size: float | int, n: int, name: str) -> int:
    if isinstance(size, bool) or size < 0:
        raise ConfigError(f"{name} must be a non-negative count or a fraction in [0, 1), got {size!r}")
    if isinstance(size, float) and size < 1:
        return int(round(size * n))
    return int(size)


def split_indices(
    groups: Sequence[str],
    val_size: int | float,
    test_size: int | float,
    seed: int,
    strata: Sequence[int] | None = None,
    official: Sequence[str | None] | None = None,
    flag: str = "--data.",
) -> dict[str, list[int]]:
    """Split items into train/val/test without any group (patient) in two splits.

    Args:
        groups: one group id per item (patient id, or the image id where there are no patients).
        val_size: number of items (int >= 1) or fraction (float < 1) for validation.
        test_size: same, for test; ignored with ``official`` (its ``"test"`` items are the test set).
        seed: the same seed gives the same split.
        strata: optional label per item; groups are allocated per stratum (the group's maximum
            label) so small validation/test sets still contain both classes.
        official: per-item official split names; when given, ``"test"`` items form the test set
            and validation is carved out of the rest.
        flag: how the command sets ``val_size`` and ``test_size`` (``--data.`` for ``retinalab fit``, ``--``
            for ``retinalab active``), for the message that suggests other sizes.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` item indices, each sorted.
    """
    n = len(groups)
    rng = np.random.default_rng(seed)
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    pool = list(by_group)
    if official is not None:
        test_groups = {g for g in pool if any(official[i] == "test" for i in by_group[g])}
        out["test"] = [i for g in test_groups for i in by_group[g]]
        pool = [g for g in pool if g not in test_groups]
        wanted = [("val", _target(val_size, sum(len(by_group[g]) for g in pool), "val_size"))]
    else:
        wanted = [("test", _target(test_size, n, "test_size")), ("val", _target(val_size, n, "val_size"))]
    group_stratum = {g: (max(strata[i] for i in by_group[g]) if strata is not None else 0) for g in pool}
    stratum_groups: dict[int, list[str]] = {}
    for g in pool:
        stratum_groups.setdefault(group_stratum[g], []).append(g)
    for s in stratum_groups:
        stratum_groups[s] = [stratum_groups[s][k] for k in rng.permutation(len(stratum_groups[s]))]
    total = sum(len(by_group[g]) for g in pool)
    for name, target in wanted:
        if target == 0:
            continue
        for _, gs in sorted(stratum_groups.items()):
            n_s = sum(len(by_group[g]) for g in gs)
            share = int(round(target * n_s / total)) if total else 0
            taken = 0
            while gs and taken < share:
                g = gs.pop()
                out[name] += by_group[g]
                taken += len(by_group[g])
        # rounding may leave the target short: fill from the largest strata
        while sum(1 for _ in out[name]) < target and any(stratum_groups.values()):
            s = max(stratum_groups, key=lambda k: len(stratum_groups[k]))
            out[name] += by_group[stratum_groups[s].pop()]
    out["train"] = [i for g in sum(stratum_groups.values(), []) for i in by_group[g]]
    if not out["train"]:
        raise ConfigError(
            f"the split leaves no training data ({n} items, val_size={val_size}, test_size={test_size}); "
            f"use smaller sizes or fractions, e.g. {flag}val_size 0.2 {flag}test_size 0.2"
        )
    return {k: sorted(v) for k, v in out.items()}


def choose_labeled(
    candidates: Sequence[int], num_labeled_images: int | float | None, seed: int
) -> tuple[list[int], list[int]]:
    """Pick the labelled items among ``candidates`` with a seeded permutation.

    The permutation does not depend on ``num_labeled_images``, so for a given seed the 10 labelled images
    are a subset of the 20, and so on (nested label budgets, as a label-efficiency study wants).

    Returns:
        ``(labeled, rest)``, each sorted.
    """
    candidates = list(candidates)
    if num_labeled_images is None:
        return sorted(candidates), []
    k = _target(num_labeled_images, len(candidates), "num_labeled_images")
    if k > len(candidates):
        raise ConfigError(
            f"num_labeled_images={num_labeled_images} but only {len(candidates)} training images have labels"
        )
    perm = np.random.default_rng(seed + 1_000_003).permutation(len(candidates))
    chosen = {candidates[p] for p in perm[:k]}
    return sorted(chosen), sorted(set(candidates) - chosen)


class LabeledChooser:
    """Chooses the labelled training images when not at random: a strategy a higher layer provides
    (an active learner: :class:`retinalab.active.EGLChooser`), given to a datamodule as its
    ``labeled_selection`` (``--data.labeled_selection retinalab.active.EGLChooser``). The datamodule
    hands it the candidates and reads back the chosen ones; ``name`` goes into ``split.json``.
    """

    name: str = "custom"

    def choose(self, cache: Any, candidates: Sequence[int], count: int, seed: int) -> list[int]:
        """The ``count`` chosen of ``candidates`` (rows of the patch cache ``cache``), in the order chosen."""
        raise NotImplementedError


def split_hash(split: dict[str, Sequence[str]]) -> str:
    """Short content hash of a split (ids per part), for manifests and run names."""
    return hashlib.sha256(json.dumps({k: list(v) for k, v in sorted(split.items())}).encode()).hexdigest()[:12]


def patch_split(
    cache: PatchCache,
    split_mode: SplitMode,
    val_size: int | float,
    test_size: int | float,
    seed: int,
    *,
    stratify: bool = True,
    num_labeled_images: int | float | None = None,
    labeled_selection: LabeledChooser | None = None,
    unlabeled_pool: Literal["all", "rest"] = "all",
    include_unknown: bool = False,
    source: str = "the dataset",
) -> dict[str, np.ndarray]:
    """The patch-cache rows of each part of a patch dataset: ``train`` / ``val`` / ``test`` (by patient,
    among the images with patch labels; :func:`split_indices`), the ``labeled`` training images
    (:func:`choose_labeled`, or ``labeled_selection``'s order) and the ``unlabeled`` stream (every
    training image, or the rest; with ``include_unknown``, also the images of unknown patch labels whose
    patient is not in val/test). The arguments are :class:`~retinalab.datamodules.PatchDataModule`'s;
    ``source`` names the data in messages."""
    from ..preprocessing.patches import UNKNOWN

    known = cache.image_labels != UNKNOWN
    known_rows = np.flatnonzero(known)
    if len(known_rows) == 0:
        raise ConfigError(
            f"{source}: no image has patch labels (no lesion masks and no grade 0); a patch dataset needs pixel "
            "annotations"
        )
    groups = [cache.images[i]["group"] for i in known_rows]
    strata = [int(cache.image_labels[i]) for i in known_rows] if stratify else None
    official = None
    if split_mode == "official":
        official = [cache.images[i]["split"] for i in known_rows]
        if "test" not in official:
            raise ConfigError(f"split_mode='official' but {source} has no official test split; use split_mode='random'")
    parts = split_indices(groups, val_size, test_size, seed, strata, official)
    train = known_rows[parts["train"]]
    if labeled_selection is not None and num_labeled_images is not None:
        n = target_count(num_labeled_images, len(train), "num_labeled_images")
        order = labeled_selection.choose(cache, list(train), n, seed)
        labeled, unlabeled = sorted(order), sorted(set(int(t) for t in train) - set(order))
    else:
        labeled, unlabeled = choose_labeled(list(train), num_labeled_images, seed)
    if unlabeled_pool == "all":
        unlabeled = sorted(int(t) for t in train)
    extra = []
    if include_unknown:
        # unknown-label images whose patient is not in val/test join the unlabelled pool
        held_out = {cache.images[i]["group"] for p in ("val", "test") for i in known_rows[parts[p]]}
        extra = [i for i in np.flatnonzero(~known) if cache.images[i]["group"] not in held_out]
    return {
        "train": train,
        "val": known_rows[parts["val"]],
        "test": known_rows[parts["test"]],
        "labeled": np.asarray(labeled, dtype=np.int64),
        "unlabeled": np.asarray(sorted(unlabeled + extra), dtype=np.int64),
    }
