"""What a round asks the oracle: the loop's options checked (:func:`check_options`), pool patches
scored under the run's acquisition and chosen with :mod:`retinalab.active.rounds` (a mixin of
:class:`~retinalab.active.ActiveLearning`: it reads the loop's pool, split, model and options)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from ..utils.errors import ConfigError
from . import rounds
from .heuristics import get_heuristic
from .rounds import Query
from .selection import image_interestingness
from .state import LoopState, matched_counts
from .train import score_items

#: option values of :class:`~retinalab.active.ActiveLearning` that are one of a few words (its
#: signature uses these, and :func:`check_options` refuses anything else with their list)
InitialDraw = Literal["stratified", "random"]
PatchKind = Literal["centred", "grid"]
ClassWeight = Literal["none", "balanced"]
CHOICES = {"initial_draw": InitialDraw, "pool_kind": PatchKind, "eval_kind": PatchKind, "class_weight": ClassWeight}


def check_options(o: dict) -> float:
    """Refuse inconsistent :class:`~retinalab.active.ActiveLearning` arguments ``o`` with a message
    naming the option; returns the network's dropout rate (``None``: 0.5 for BALD, else 0)."""
    if o["oracle"] == "human" and o["pool_kind"] == "centred":
        raise ConfigError(
            "pool_kind: centred samples patches from the ground-truth masks, which a human-oracle run does not use; "
            "set pool_kind: grid"
        )
    for name in ("k", "images_per_round", "initial_batches", "initial_images", "max_rounds", "patience", "plot_every"):
        if o[name] is None and name == "plot_every":  # never
            continue
        if o[name] < 0:
            raise ConfigError(f"{name} must be >= 0, got {o[name]}")
    if o["score_batch_size"] is not None and o["score_batch_size"] < 1:
        raise ConfigError(f"score_batch_size must be a positive number of patches, got {o['score_batch_size']}")
    if o["select"] == "images" and o["images_per_round"] == 0 and o["k"] == 0:
        raise ConfigError("select: images with images_per_round 0 and k 0 would never label anything")
    if o["select"] == "images" and o["image_patches"] == "selected_images" and o["k"] == 0:
        raise ConfigError(
            "image_patches: selected_images labels k patches of the chosen images each round; set k >= 1 (or "
            "image_patches: pool)"
        )
    acquisition = o["acquisition"]
    heuristic = get_heuristic(acquisition)  # an unknown one: one line listing the registered ones
    for name, kind in CHOICES.items():
        allowed = get_args(kind)
        if o[name] not in allowed:
            raise ConfigError(f"{name} must be {' or '.join(allowed)}, not {o[name]!r}")
    dropout = o["dropout"]
    if dropout is None:
        dropout = heuristic.default_dropout if heuristic.needs_dropout else 0.0
    if not 0 <= dropout < 1:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    if heuristic.needs_dropout and dropout == 0:
        raise ConfigError(
            f"acquisition: {acquisition} needs dropout (Monte-Carlo passes); set dropout > 0 (e.g. "
            f"{heuristic.default_dropout}) or leave it unset"
        )
    if o["mc_samples"] < 1:
        raise ConfigError(f"mc_samples must be >= 1, got {o['mc_samples']}")
    if o["match_labels"] is not None and heuristic.scored:
        raise ConfigError(
            "match_labels copies another run's label counts into a random arm; it needs acquisition: random, not "
            f"{acquisition}"
        )
    return float(dropout)


class Choosing:
    """Scoring and selection of :class:`~retinalab.active.ActiveLearning`."""

    _score_seed = 0  # BALD's dropout masks: set per round by _choose, so a redone round draws the same

    def score(self, items: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The acquisition's scores (EGL, entropy, margin, BALD; random runs score by EGL, for heatmaps
        and interestingness) and p(exudate) of pool ``items``; each rank scores a shard under DDP."""
        acquisition = self.acquisition if get_heuristic(self.acquisition).scored else "egl"
        return score_items(
            self.net,
            self.pool,
            items,
            self.scope,
            self.score_batch_size,
            self.fabric,
            acquisition,
            self.mc_samples,
            self._score_seed,
        )

    def describe_queries(
        self, items: list[int], images: list[int]
    ) -> tuple[np.ndarray, dict[int, tuple[np.ndarray, np.ndarray]]]:
        """What a human oracle is shown beside the queries: p(exudate) of ``items`` under the current
        model, and the acquisition's score of every grid patch of ``images`` (their heatmaps; EGL for a
        random run), from one scoring pass."""
        grids = [np.asarray(self.grid_of_image[i], dtype=np.int64) for i in images]
        scores, prob = self.score(np.concatenate([np.asarray(items, dtype=np.int64), *grids]))
        heat, at = {}, len(items)
        for img, grid in zip(images, grids, strict=True):
            heat[int(img)] = (grid, scores[at : at + len(grid)].numpy())
            at += len(grid)
        return prob[: len(items)].numpy(), heat

    def _sigma(self, images: list[int]) -> dict[int, float]:
        """Algorithm 2, line 5: interestingness = sum of the scores over each image's grid patches."""
        if not images:
            return {}
        items = np.concatenate([self.grid_of_image[i] for i in images])
        phi, _ = self.score(items)
        return image_interestingness(phi, torch.from_numpy(np.asarray(self.pool.image)[items]))

    def _remaining(self, state: LoopState) -> np.ndarray:
        labelled = np.fromiter(state.labelled, np.int64, len(state.labelled))
        return self.pool_items[~np.isin(self.pool_items, labelled)]

    def _budget(self, state: LoopState, wanted: int) -> int:
        if self.max_labels is None:
            return wanted
        return max(0, min(wanted, self.max_labels - len(state.labelled)))

    def _initial(self, state: LoopState) -> Query:
        if self.select == "patches":
            labels = np.asarray(self.pool.labels) if self.initial_draw == "stratified" else None
            return rounds.initial_patches(
                self.pool_items, self._budget(state, self.initial_batches * self.batch_size), self.seed, labels
            )
        limit = self._budget(state, len(self.pool_items))
        return rounds.initial_images(
            self.split["train"], self.has_exudate, self.items_of_image, self.initial_images, limit, self.seed
        )

    def _choose(self, state: LoopState, r: int) -> Query:
        """Round ``r``'s queries (:mod:`retinalab.active.rounds`); the time it took is kept in
        ``self.select_seconds`` (scoring included)."""
        start = time.perf_counter()
        try:
            return self._choose_now(state, r)
        finally:
            self.select_seconds = time.perf_counter() - start

    def _choose_now(self, state: LoopState, r: int) -> Query:
        remaining = self._remaining(state)
        seed = self.seed * 1_000 + r
        self._score_seed = seed
        limit = self._budget(state, len(remaining))

        def phi_of(items: np.ndarray) -> torch.Tensor:
            return self.score(items)[0]

        candidates: list[int] = []
        if self.select == "images":
            free = np.zeros(len(self.pool.labels), dtype=bool)  # unlabelled pool items: O(1) per lookup
            free[remaining] = True
            done = set(state.labelled_images)
            candidates = [i for i in self.split["train"] if i not in done and free[self.items_of_image[i]].any()]
        if self.match_labels is not None:
            n_labels, n_images = matched_counts(Path(self.match_labels), self.config, state, r)
            return rounds.matched_random(
                self.select,
                self.image_patches,
                remaining,
                candidates,
                self.items_of_image,
                n_images,
                min(n_labels, limit),
                seed,
            )
        if self.select == "images" and self.images_per_round:
            return rounds.algorithm2(
                self.acquisition,
                self.image_patches,
                remaining,
                candidates,
                self.items_of_image,
                self.images_per_round,
                self.k,
                limit,
                seed,
                phi_of,
                self._sigma,
            )
        return rounds.patches_round(self.acquisition, remaining, min(self.k, limit), seed, phi_of)
