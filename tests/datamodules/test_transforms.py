"""The augmentation pipelines' random streams: one per pipeline, one per loader worker, and a state
that a checkpoint can carry."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from retinalab.datamodules.transforms import (
    image_train_transform,
    patch_train_transform,
    seed_worker_transforms,
    set_stream_state,
    stream_state,
)


def _flips(tf, n: int) -> list[tuple[bool, bool]]:
    tf.save_applied_params = True
    img = np.zeros((32, 32, 3), np.uint8)
    out = []
    for _ in range(n):
        names = [name for name, _ in tf(image=img)["applied_transforms"]]
        out.append(("HorizontalFlip" in names, "VerticalFlip" in names))
    return out


@pytest.mark.parametrize("make", [patch_train_transform, image_train_transform])
def test_the_flips_of_a_pipeline_are_drawn_independently(make):
    """Paper 000's "random flipping": each flip with probability 1/2, independently, so the four
    combinations each come about a quarter of the time. Albumentations 2.0's ``Compose(seed=s)`` seeds
    every transform's own generator with ``s``, and the two flips came together or not at all."""
    counts = Counter(_flips(make(32, seed=3), 800))
    assert set(counts) == {(False, False), (False, True), (True, False), (True, True)}
    for c in counts.values():  # 200 expected, binomial sd 12
        assert 150 < c < 250, counts


def test_a_stream_state_saved_and_set_gives_the_same_next_draws():
    tf = patch_train_transform(32, seed=5)
    _flips(tf, 7)
    saved = stream_state(tf)
    ahead = _flips(tf, 40)
    other = patch_train_transform(32, seed=5)  # a rebuilt pipeline, as after a restart
    assert _flips(other, 40) != ahead
    set_stream_state(other, saved)
    assert _flips(other, 40) == ahead


class _Flips(Dataset):
    def __init__(self) -> None:
        self.transform = patch_train_transform(32, seed=0)
        self.transform.save_applied_params = True

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> tuple[int, int]:
        names = [n for n, _ in self.transform(image=np.zeros((32, 32, 3), np.uint8))["applied_transforms"]]
        return torch.utils.data.get_worker_info().id, 2 * ("HorizontalFlip" in names) + ("VerticalFlip" in names)


def test_loader_workers_draw_their_own_augmentations():
    """Two workers each get a copy of the dataset; without ``seed_worker_transforms`` their copies of
    the pipeline start in the same state and draw the same flips, sample for sample."""

    def per_worker(init) -> dict[int, list[int]]:
        torch.manual_seed(0)
        loader = DataLoader(_Flips(), batch_size=8, num_workers=2, worker_init_fn=init, multiprocessing_context="fork")
        seqs: dict[int, list[int]] = {0: [], 1: []}
        for worker, flips in loader:
            seqs[int(worker[0])] += flips.tolist()
        return seqs

    plain = per_worker(None)
    assert plain[0] == plain[1]  # the defect this guards against (albumentations 2.0.8)
    seeded = per_worker(seed_worker_transforms)
    assert seeded[0] != seeded[1] and len(seeded[0]) == len(seeded[1]) == 32
    assert seeded == per_worker(seed_worker_transforms)  # and the same again from the same torch seed
