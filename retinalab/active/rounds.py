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

These functions know nothing of files, devices or training: the loop (:mod:`retinalab.active.loop`)
passes the pool items and two scorers, ``phi_of(items)`` (the acquisition's score of pool items under M:
EGL, entropy, margin or BALD, :mod:`retinalab.active.heuristics`) and ``sigma_of(images)``
(interestingness of images: the sum of those scores), and asks the oracle for the :class:`Query`
returned. Every scored acquisition goes through the same two algorithms; ``random`` draws instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .heuristics import get_heuristic
from .selection import select_images, select_random, select_top_k

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
