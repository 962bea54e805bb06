"""Which training images to label, chosen by EGL (paper 002's Algorithm 2 applied to paper 000's data).

Paper 000 labels a random subset of the training images; it names active selection as future work.
:func:`egl_image_order` orders the candidate images the way an EGL active learner would have them
annotated: ``initial`` random images first, then, round after round, the ``step`` unlabelled images whose
patches have the largest summed expected gradient length under a LeNet trained on the patches
labelled so far (``select_images``; trained by the active learner's own loop,
:func:`~retinalab.active.learner.sgd_epochs`, without the dihedral variants). The order does not
depend on how many images are wanted, so the first 10 are among the first 20 (nested budgets, as for
random selection), and a study can compare ``random`` and ``egl`` at the same counts. Orders are cached
beside the patch cache.
:class:`EGLChooser` gives the order to a patch datamodule (``--data.labeled_selection
retinalab.active.EGLChooser``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence

import numpy as np
import torch

from ..datamodules.splits import LabeledChooser
from ..models.lenet import LeNet
from ..preprocessing.cache import PatchCache
from ..utils.io import write_text_atomic
from .egl import egl
from .learner import sgd_epochs
from .selection import select_images

log = logging.getLogger(__name__)


def _patches(cache: PatchCache, images: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All patches of ``images``: ``x`` (B x 3 x s x s in [0, 1]), labels (-1 unknown), image index."""
    idx = np.asarray(sorted(images), dtype=np.int64)
    arr = np.asarray(cache.patches[idx])  # n x G x s x s x 3
    n, g = arr.shape[:2]
    x = torch.from_numpy(arr.reshape(n * g, *arr.shape[2:])).permute(0, 3, 1, 2).float().div_(255)
    y = torch.from_numpy(np.asarray(cache.labels[idx]).reshape(-1).astype(np.int64))
    owner = torch.from_numpy(np.repeat(idx, g))
    return x, y, owner


def _score_images(
    model: LeNet, cache: PatchCache, images: Sequence[int], batch: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """EGL of every patch of ``images`` and the image each belongs to, read a few images at a time:
    memory holds one batch of float patches (about ``batch`` of them), not the whole candidate set."""
    per_batch = max(1, batch // cache.patches.shape[1])  # whole images per batch
    phis, owners = [], []
    for s in range(0, len(images), per_batch):
        x, _, owner = _patches(cache, images[s : s + per_batch])
        phis.append(egl(model, x, "fc")[0])
        owners.append(owner)
    return torch.cat(phis), torch.cat(owners)


def egl_image_order(
    cache: PatchCache,
    candidates: Sequence[int],
    count: int,
    seed: int = 0,
    initial: int = 2,
    step: int = 1,
    epochs: int = 3,
    lr: float = 0.01,
    batch_size: int = 64,
) -> list[int]:
    """The first ``count`` of ``candidates`` (patch-cache rows with patch labels) in EGL order.

    Args:
        cache: the patch cache.
        candidates: the training images that may be labelled.
        count: how many to return.
        seed: initial images, network initialisation and training order.
        initial: random images labelled before EGL takes over.
        step: images added per round (fixed, so orders are nested across counts).
        epochs: SGD epochs on the labelled patches each round (warm-started).
        lr: SGD learning rate.
        batch_size: SGD batch size.
    """
    candidates = sorted(int(c) for c in candidates)
    count = min(count, len(candidates))
    rng = np.random.default_rng(seed + 7_919)
    order = [int(c) for c in rng.permutation(candidates)[: min(initial, count)]]
    if len(order) >= count:
        return order
    torch.manual_seed(seed)
    size = cache.grid.out_size
    model = LeNet(2, size, 3, (20, 50), 500)  # channels-last (retinalab/models/layout.py)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    while len(order) < count:
        x, y, _ = _patches(cache, order)
        keep = y >= 0
        x, y = x[keep], y[keep]
        sgd_epochs(
            model,
            opt,
            torch.Tensor.backward,
            x,
            y,
            epochs=epochs,
            batch_size=batch_size,
            variants=1,
            generator=gen,
            device=torch.device("cpu"),
        )
        chosen = set(order)
        phi, owner = _score_images(model, cache, [c for c in candidates if c not in chosen])
        order += select_images(phi, owner, min(step, count - len(order)))
    return order


def cached_egl_order(cache: PatchCache, candidates: Sequence[int], count: int, seed: int = 0, **kw) -> list[int]:
    """:func:`egl_image_order`, memoised in ``<cache>/egl_orders/``: a longer stored order serves any
    shorter count (orders are nested), a shorter one is recomputed and replaced."""
    key = hashlib.sha256(
        json.dumps({"candidates": sorted(int(c) for c in candidates), "seed": seed, **kw}, sort_keys=True).encode()
    ).hexdigest()[:16]
    path = cache.path / "egl_orders" / f"{key}.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if len(stored) >= min(count, len(candidates)):
            return stored[:count]
    order = egl_image_order(cache, candidates, count, seed, **kw)
    write_text_atomic(path, json.dumps(order))
    log.info("EGL order of %d labelled images stored in %s", len(order), path)
    return order


class EGLChooser(LabeledChooser):
    """The labelled images of a patch datamodule chosen by an EGL active learner (:func:`egl_image_order`).

    Args:
        initial: random images labelled before EGL takes over.
        step: images added per round.
        epochs: SGD epochs on the labelled patches per round.
    """

    name = "egl"

    def __init__(self, initial: int = 2, step: int = 1, epochs: int = 3) -> None:
        self.initial, self.step, self.epochs = initial, step, epochs

    def choose(self, cache: PatchCache, candidates: Sequence[int], count: int, seed: int) -> list[int]:
        return cached_egl_order(
            cache, candidates, count, seed, initial=self.initial, step=self.step, epochs=self.epochs
        )

    def __repr__(self) -> str:
        return f"EGLChooser(initial={self.initial}, step={self.step}, epochs={self.epochs})"
