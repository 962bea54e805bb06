"""Paper 002's rounds as the paper writes them: what the oracle is asked to label in each round.

* the initial labelled set: Algorithm 1's L' (``initial_batches`` batches of random patches, half of
  each class where the pool's labels are known) or Algorithm 2's T_mu (mu random images, half with
  exudates, all their ground-truth patches);
* **Algorithm 1** (lines 2-6): Phi of every unlabelled patch under the current model M, the k highest;
* **Algorithm 2** (lines 4-8): sigma_image = sum of Phi over the image's grid patches for every image not
  yet opened, the image(s) with the largest sigma; then line 10, "update M with k selected patches
  using Algorithm 1 and the patches in L_mu", in one of its two readings: k patches by Algorithm 1
  among the chosen images' patches (``selected_images``: every label from an image the annotator
  opened), or all the chosen images' patches plus k patches by Algorithm 1 from the whole pool (``pool``);
* the random baseline: the same numbers drawn uniformly, either with the same rule (``k``, images per
  round) or at another run's label and image counts, round by round (:func:`matched_random`).

The functions know nothing of files, devices or training: they take the pool items and two scorers,
``phi_of(items)`` (the acquisition's score of pool items under M: EGL, entropy, margin or BALD,
:mod:`retinalab.active.heuristics`) and ``sigma_of(images)`` (interestingness of images: the sum of
those scores), and return the :class:`Query` to ask. Every scored acquisition goes through the same two
algorithms; ``random`` draws instead. :class:`Strategy` applies them to one run: its options, its pool
and split, and its learner's scores (the loop, :mod:`retinalab.active.loop`, asks it each round).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .heuristics import get_heuristic
from .selection import image_interestingness, select_images, select_random, select_top_k
from .state import LoopState, matched_counts

if TYPE_CHECKING:
    from .learner import Learner
    from .options import RunOptions
    from .pool import ExudatePatches
    from .split import PoolSplit

PhiFn = Callable[[np.ndarray], torch.Tensor]
SigmaFn = Callable[[list[int]], dict[int, float]]


@dataclass
class Query:
    """One round's questions to the oracle."""

    items: list[int]  # pool items to label
    scores: list[
        float
    ]  # acquisition score of each patch, its image's sigma when it came with its image, NaN for random/initial
    images: list[int] = field(default_factory=list)  # images opened this round (Algorithm 2)
    sigma: dict[int, float] = field(default_factory=dict)  # Algorithm 2: sigma of every candidate image

    def __iter__(self):  # items, scores, images, sigma = query
        return iter((self.items, self.scores, self.images, self.sigma))


def initial_patches(pool_items: np.ndarray, n: int, seed: int, labels: np.ndarray | None = None) -> Query:
    """Algorithm 1's L': ``n`` random pool patches (paper 002: "5 batches of 32 samples").

    With ``labels`` (the pool's labels, indexed by item; -1 unknown), the draw is stratified: half the
    patches drawn uniformly among the exudate patches and half among the healthy ones (fewer where a
    class has fewer), the rest uniformly among what is left. Paper 002's patch sets are balanced per
    class; an initial set drawn uniformly from a pool where exudates are rare may hold none, and the
    initial model then predicts one class. Without labels (a human oracle's grid pool) the draw is uniform.
    """
    rng = np.random.default_rng(seed + 10)
    pool_items = np.asarray(pool_items, dtype=np.int64)
    n = min(n, len(pool_items))
    if labels is None or not (np.asarray(labels)[pool_items] >= 0).all():
        items = rng.choice(pool_items, size=n, replace=False)
        return Query(sorted(int(i) for i in items), [math.nan] * len(items))
    y = np.asarray(labels)[pool_items]
    pos, neg = pool_items[y == 1], pool_items[y == 0]
    n_pos = min(len(pos), n // 2)
    n_neg = min(len(neg), n - n_pos)
    picked = np.concatenate([rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)])
    if len(picked) < n:  # one class ran short: fill up from the rest of the pool
        rest = np.setdiff1d(pool_items, picked)
        picked = np.concatenate([picked, rng.choice(rest, n - len(picked), replace=False)])
    return Query(sorted(int(i) for i in picked), [math.nan] * len(picked))


def initial_images(
    train: Sequence[int], has_exudate: np.ndarray, items_of_image: dict[int, np.ndarray], mu: int, limit: int, seed: int
) -> Query:
    """Algorithm 2, lines 1-2: T_mu, ``mu`` random training images (half with exudates, half without, so
    that M sees both classes), and their ground-truth patches (at most ``limit``)."""
    rng = np.random.default_rng(seed + 10)
    train = np.asarray(train)
    pos, neg = train[has_exudate[train]], train[~has_exudate[train]]
    n_pos = min(len(pos), math.ceil(mu / 2))
    n_neg = min(len(neg), mu - n_pos)
    images = sorted(
        int(i) for i in np.concatenate([rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)])
    )
    items = [int(i) for img in images for i in items_of_image[img]][:limit]
    return Query(items, [math.nan] * len(items), images)


def algorithm1(remaining: np.ndarray, k: int, phi_of: PhiFn) -> Query:
    """Algorithm 1, lines 2-6: the score (Phi for EGL) of every unlabelled patch under M, the ``k``
    highest (ties: lower item)."""
    if k <= 0 or not len(remaining):
        return Query([], [])
    phi = phi_of(remaining)
    top = select_top_k(phi, k)
    return Query([int(remaining[t]) for t in top], [float(phi[t]) for t in top])


def random_patches(remaining: np.ndarray, k: int, seed: int) -> Query:
    """The baseline of Algorithm 1: ``k`` unlabelled patches drawn uniformly."""
    if k <= 0 or not len(remaining):
        return Query([], [])
    picked = select_random(len(remaining), k, seed)
    return Query([int(remaining[t]) for t in picked], [math.nan] * len(picked))


def algorithm2_images(candidates: list[int], n: int, sigma_of: SigmaFn) -> tuple[list[int], dict[int, float]]:
    """Algorithm 2, lines 4-7: sigma of every candidate image, the ``n`` largest (and every sigma)."""
    if not candidates or n <= 0:
        return [], {}
    sigma = sigma_of(candidates)
    return select_images(torch.tensor([sigma[i] for i in candidates]), torch.tensor(candidates), n), sigma


def random_images(candidates: list[int], n: int, seed: int) -> list[int]:
    """The baseline of Algorithm 2: ``n`` candidate images drawn uniformly."""
    if not candidates or n <= 0:
        return []
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(candidates, size=min(n, len(candidates)), replace=False))


def _free_patches(images: list[int], items_of_image: dict[int, np.ndarray], remaining: np.ndarray) -> list[int]:
    """The unlabelled pool patches of ``images``, image by image."""
    return [int(i) for img in images for i in items_of_image[img][np.isin(items_of_image[img], remaining)]]


def _free_counts(images: list[int], items_of_image: dict[int, np.ndarray], remaining: np.ndarray) -> np.ndarray:
    """How many unlabelled pool patches each of ``images`` holds (one membership test over all of them)."""
    sizes = [len(items_of_image[i]) for i in images]
    if not sum(sizes):
        return np.zeros(len(images), dtype=np.int64)
    free = np.isin(np.concatenate([items_of_image[i] for i in images]), remaining)
    return np.bincount(np.repeat(np.arange(len(images)), sizes), weights=free, minlength=len(images)).astype(np.int64)


def algorithm2(
    acquisition: str,
    reading: str,
    remaining: np.ndarray,
    candidates: list[int],
    items_of_image: dict[int, np.ndarray],
    n_images: int,
    k: int,
    limit: int,
    seed: int,
    phi_of: PhiFn,
    sigma_of: SigmaFn,
) -> Query:
    """One round of Algorithm 2 (or its random baseline): the image(s) (lines 4-8), then line 10 as
    ``reading`` says, ``limit`` labels at most. ``acquisition`` is ``random`` or a scored strategy (EGL
    as in the paper, or entropy, margin, BALD: the same rule with their score in place of Phi):

    * ``selected_images``: the ``k`` patches of highest score among the chosen images' unlabelled patches
      (random: ``k`` of them drawn uniformly);
    * ``pool``: all the chosen images' unlabelled patches, then ``k`` patches by Algorithm 1 from the
      rest of the pool.

    ``seed`` is the round's seed: random images use it, random patches ``seed + 500``.
    """
    scored = get_heuristic(acquisition).scored
    if scored:
        images, sigma = algorithm2_images(candidates, n_images, sigma_of)
    else:
        images, sigma = random_images(candidates, n_images, seed), {}
    per_image = [(img, _free_patches([img], items_of_image, remaining)) for img in images]
    own = [i for _, items in per_image for i in items]
    if reading == "selected_images":
        own = np.asarray(own, dtype=np.int64)
        k = min(k, limit)
        q = algorithm1(own, k, phi_of) if scored else random_patches(own, k, seed + 500)
        return Query(q.items, q.scores, images, sigma)
    if reading != "pool":
        raise ValueError(f"image_patches must be selected_images or pool, not {reading!r}")
    scores = [sigma.get(img, math.nan) for img, items in per_image for _ in items]
    if len(own) >= limit:
        return Query(own[:limit], scores[:limit], images, sigma)
    rest = remaining[~np.isin(remaining, own)]
    k = min(k, limit - len(own))
    more = algorithm1(rest, k, phi_of) if scored else random_patches(rest, k, seed + 500)
    return Query(own + more.items, scores + more.scores, images, sigma)


def matched_random(
    select: str,
    reading: str,
    remaining: np.ndarray,
    candidates: list[int],
    items_of_image: dict[int, np.ndarray],
    n_images: int,
    n_labels: int,
    seed: int,
) -> Query:
    """The random arm at another run's counts: ``n_labels`` new labels (and ``n_images`` new images for
    Algorithm 2) drawn uniformly. ``pool``: the images' unlabelled patches (a random subset of them where
    they hold more than ``n_labels``), then random pool patches up to ``n_labels``; ``selected_images``:
    ``n_labels`` random patches among the images' unlabelled patches, the images drawn among those that
    hold at least ``n_labels / n_images`` of them (so that both counts match; where too few images do, one
    more random image is opened at a time until there are enough patches). Seeds as :func:`algorithm2`."""
    if n_labels <= 0:
        return Query([], [])
    if select != "images":
        return random_patches(remaining, n_labels, seed + 500)
    rng = np.random.default_rng(seed)
    order = [int(i) for i in rng.permutation(np.asarray(candidates, dtype=np.int64))]
    n_images = max(n_images, 0)
    if reading == "selected_images" and n_images:
        enough = _free_counts(order, items_of_image, remaining) >= math.ceil(n_labels / n_images)
        order = [i for i, e in zip(order, enough, strict=True) if e] + [
            i for i, e in zip(order, enough, strict=True) if not e
        ]
    images, extra = order[:n_images], order[n_images:]
    per_image = [(img, _free_patches([img], items_of_image, remaining)) for img in images]
    own = [i for _, items in per_image for i in items]
    if reading == "selected_images":
        while len(own) < n_labels and extra:
            images.append(extra.pop(0))
            own = _free_patches(images, items_of_image, remaining)
        q = random_patches(np.asarray(own, dtype=np.int64), n_labels, seed + 500)
        return Query(q.items, q.scores, sorted(images))
    if len(own) >= n_labels:
        q = random_patches(np.asarray(own, dtype=np.int64), n_labels, seed + 700)
        return Query(q.items, q.scores, sorted(images))
    rest = remaining[~np.isin(remaining, own)]
    q = random_patches(rest, n_labels - len(own), seed + 500)
    return Query(own + q.items, [math.nan] * len(own) + q.scores, sorted(images))


def patches_round(acquisition: str, remaining: np.ndarray, k: int, seed: int, phi_of: PhiFn) -> Query:
    """One round of Algorithm 1 with a scored ``acquisition`` (or its random baseline, seeded with ``seed + 500``)."""
    return (
        algorithm1(remaining, k, phi_of)
        if get_heuristic(acquisition).scored
        else random_patches(remaining, k, seed + 500)
    )


class Strategy:
    """One run's rounds: Algorithms 1 and 2 (or the random baseline) over its pool and split, scored by its
    learner's current model.

    Args:
        options: the run's options (selection fields, seed, budget).
        config: the run's config (a matched run's frozen fields are checked against it).
        pool: the patch pool.
        data: the run's split of it (:class:`~retinalab.active.split.PoolSplit`).
        learner: scores pool patches (:meth:`~retinalab.active.learner.Learner.score`).
    """

    def __init__(self, options: RunOptions, config: dict, pool: ExudatePatches, data: PoolSplit, learner: Learner):
        self.options, self.config, self.pool, self.data, self.learner = options, config, pool, data, learner
        self.score_seed = 0  # BALD's dropout masks: set per round by choose, so a redone round draws the same
        #: how long the last :meth:`choose` took, scoring included (NaN: the round's query was chosen before a restart)
        self.seconds = math.nan

    def score(self, items: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The acquisition's scores (EGL, entropy, margin, BALD; a random run's are EGL's, for heatmaps and
        interestingness) and p(exudate) of pool ``items``; each rank scores a shard under DDP."""
        return self.learner.score(items, self.score_seed)

    def describe_queries(
        self, items: list[int], images: list[int]
    ) -> tuple[np.ndarray, dict[int, tuple[np.ndarray, np.ndarray]]]:
        """What a human oracle is shown beside the queries: p(exudate) of ``items`` under the current
        model, and the acquisition's score of every grid patch of ``images`` (their heatmaps; EGL for a
        random run), from one scoring pass."""
        grids = [np.asarray(self.data.grid_of_image[i], dtype=np.int64) for i in images]
        scores, prob = self.score(np.concatenate([np.asarray(items, dtype=np.int64), *grids]))
        heat, at = {}, len(items)
        for img, grid in zip(images, grids, strict=True):
            heat[int(img)] = (grid, scores[at : at + len(grid)].numpy())
            at += len(grid)
        return prob[: len(items)].numpy(), heat

    def sigma(self, images: list[int]) -> dict[int, float]:
        """Algorithm 2, line 5: interestingness = sum of the scores over each image's grid patches."""
        if not images:
            return {}
        items = np.concatenate([self.data.grid_of_image[i] for i in images])
        phi, _ = self.score(items)
        return image_interestingness(phi, torch.from_numpy(np.asarray(self.pool.image)[items]))

    def remaining(self, state: LoopState) -> np.ndarray:
        """The pool items not labelled yet."""
        labelled = np.fromiter(state.labelled, np.int64, len(state.labelled))
        return self.data.pool_items[~np.isin(self.data.pool_items, labelled)]

    def _budget(self, state: LoopState, wanted: int) -> int:
        if self.options.max_labels is None:
            return wanted
        return max(0, min(wanted, self.options.max_labels - len(state.labelled)))

    def initial(self, state: LoopState) -> Query:
        """Round 0's queries: Algorithm 1's L' or Algorithm 2's T_mu."""
        o, data = self.options, self.data
        if o.select == "patches":
            labels = np.asarray(self.pool.labels) if o.initial_draw == "stratified" else None
            return initial_patches(
                data.pool_items, self._budget(state, o.initial_batches * o.batch_size), o.seed, labels
            )
        limit = self._budget(state, len(data.pool_items))
        return initial_images(
            data.split["train"], data.has_exudate, data.items_of_image, o.initial_images, limit, o.seed
        )

    def choose(self, state: LoopState, r: int) -> Query:
        """Round ``r``'s queries; the time it took is kept in :attr:`seconds` (scoring included)."""
        start = time.perf_counter()
        try:
            return self._choose(state, r)
        finally:
            self.seconds = time.perf_counter() - start

    def _choose(self, state: LoopState, r: int) -> Query:
        o, data = self.options, self.data
        remaining = self.remaining(state)
        seed = o.seed * 1_000 + r
        self.score_seed = seed
        limit = self._budget(state, len(remaining))

        def phi_of(items: np.ndarray) -> torch.Tensor:
            return self.score(items)[0]

        candidates: list[int] = []
        if o.select == "images":
            free = np.zeros(len(self.pool.labels), dtype=bool)  # unlabelled pool items: O(1) per lookup
            free[remaining] = True
            done = set(state.labelled_images)
            candidates = [i for i in data.split["train"] if i not in done and free[data.items_of_image[i]].any()]
        if o.match_labels is not None:
            n_labels, n_images = matched_counts(Path(o.match_labels), self.config, state, r)
            return matched_random(
                o.select,
                o.image_patches,
                remaining,
                candidates,
                data.items_of_image,
                n_images,
                min(n_labels, limit),
                seed,
            )
        if o.select == "images" and o.images_per_round:
            return algorithm2(
                o.acquisition,
                o.image_patches,
                remaining,
                candidates,
                data.items_of_image,
                o.images_per_round,
                o.k,
                limit,
                seed,
                phi_of,
                self.sigma,
            )
        return patches_round(o.acquisition, remaining, min(o.k, limit), seed, phi_of)

    def heatmap(self, state: LoopState, round_sigma: dict[int, float]) -> tuple[int, np.ndarray, np.ndarray] | None:
        """The acquisition's scores over the grid of the image to annotate next: the unlabelled training
        image with the highest interestingness this round (``round_sigma``, Algorithm 2), else the first
        tracked unlabelled one. None for random selection."""
        if not get_heuristic(self.options.acquisition).scored or state.round < 0:
            return None
        train = self.data.split["train"]
        done = set(state.labelled_images)
        unlabelled = [i for i in train if i not in done]
        free = set(unlabelled)
        ranked = [i for i in sorted(round_sigma, key=lambda i: -round_sigma[i]) if i in free]
        ranked += [i for i in self.data.tracked if i in free] + unlabelled + list(train)
        img = int(ranked[0])
        items = self.data.grid_of_image[img]
        if not len(items):
            return None
        phi, _ = self.score(items)
        return img, items, phi.numpy()
