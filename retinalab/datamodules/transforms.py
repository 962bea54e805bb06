"""Albumentations pipelines used by the datamodules, and their random streams.

Albumentations keeps its own random state, independent of ``seed_everything``: every pipeline here
takes a ``seed`` (default: derived from torch's initial seed, which ``seed_everything`` sets), so the
same config and seed give the same augmentations and the same run.

Two things albumentations 2.0 does not do, done here:

* **One stream per pipeline.** ``A.Compose(seed=s)`` gives every transform in it its own generators,
  all seeded with ``s``, so the transforms draw the same numbers: ``HorizontalFlip`` and
  ``VerticalFlip`` (both ``p=0.5``) flipped together or not at all, and the crop offset followed the
  same draws. :func:`share_stream` gives the whole pipeline one numpy and one Python generator.
* **One stream per loader worker.** Each DataLoader worker gets a copy of the dataset, and with it
  the pipeline's generator in the same state, so every worker drew the same augmentations.
  :func:`seed_worker_transforms` (the loaders' ``worker_init_fn``) re-seeds each worker's copy
  from the seed and the worker's torch seed (which differs between workers and between runs of the
  loader).

The streams' states go into ``last.ckpt`` (:func:`transforms_of`, ``LatestCheckpoint``), so that a
resumed run draws what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, Literal, get_args

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Subset


def default_seed(stream: int = 0) -> int:
    """The pipelines' seed when none is given: torch's initial seed (set by ``seed_everything``), plus
    ``stream`` for a pipeline that must draw apart from the others (the unlabelled loader's)."""
    return int((torch.initial_seed() + stream) % 2**32)


def _seed(seed: int | None) -> int:
    return default_seed() if seed is None else seed


def share_stream(tf: A.BaseCompose, seed: int | list[int]) -> A.BaseCompose:
    """Give every transform of ``tf`` the same numpy and Python generators, seeded from ``seed`` (an int,
    or a list of ints mixed by numpy's ``SeedSequence``); returns ``tf``."""
    seq = np.random.SeedSequence(seed)
    tf.set_random_state(np.random.default_rng(seq), random.Random(int(seq.generate_state(1, np.uint64)[0])))
    return tf


def _compose(transforms: list[Any], seed: int | None) -> A.Compose:
    s = _seed(seed)
    return share_stream(A.Compose(transforms, seed=s), s)


def transforms_of(dataset: Any) -> Iterator[A.BaseCompose]:
    """The albumentations pipelines a dataset applies (through ``Subset`` and ``ConcatDataset``)."""
    if isinstance(dataset, Subset):
        yield from transforms_of(dataset.dataset)
    elif isinstance(dataset, ConcatDataset):
        for d in dataset.datasets:
            yield from transforms_of(d)
    else:
        for name in ("transform", "strong_transform"):  # FixMatch's unlabelled patches carry a second pipeline
            if isinstance(getattr(dataset, name, None), A.BaseCompose):
                yield getattr(dataset, name)


def loader_transforms(loaders: Any) -> list[A.BaseCompose]:
    """The pipelines of the datasets of ``loaders`` (a DataLoader, or dicts/lists of them, as a
    CombinedLoader's ``iterables``), in a fixed order, each once."""
    found: list[A.BaseCompose] = []

    def walk(x: Any) -> None:  # never iterates a loader: that would draw batches
        if isinstance(x, DataLoader):
            for tf in transforms_of(x.dataset):
                if all(tf is not f for f in found):
                    found.append(tf)
        elif isinstance(x, dict):
            for k in sorted(x):
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        elif hasattr(x, "flattened"):  # a CombinedLoader
            walk(list(x.flattened))

    walk(loaders)
    return found


def stream_state(tf: A.BaseCompose) -> dict[str, Any]:
    """The pipeline's generator states: plain ints and tuples, readable with ``weights_only``."""
    return {"numpy": tf.random_generator.bit_generator.state, "python": tf.py_random.getstate()}


def set_stream_state(tf: A.BaseCompose, state: dict[str, Any]) -> None:
    """Put the pipeline's generators (shared by all its transforms) in ``state``."""
    gen = np.random.default_rng()
    gen.bit_generator.state = state["numpy"]
    py = random.Random()
    py.setstate(as_tuple(state["python"]))
    tf.set_random_state(gen, py)


def as_tuple(x: Any) -> Any:
    """Lists back to tuples, at every depth (``random.setstate`` wants the tuples it gave)."""
    return tuple(as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def seed_worker_transforms(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: this worker's pipelines draw their own stream, seeded from the
    pipeline's seed and the worker's torch seed (base seed of this loader run + worker id)."""
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    for tf in transforms_of(info.dataset):
        base = tf.seed if tf.seed is not None else 0
        share_stream(tf, [int(base) % 2**32, int(info.seed) % 2**32, int(info.seed) >> 32])


def patch_train_transform(size: int, pad: int = 2, seed: int | None = None) -> A.Compose:
    """Paper 000 appendix A: "random cropping and flipping" of the 32x32 training patches
    (reflect-pad by ``pad`` pixels, random crop back, horizontal and vertical flips)."""
    return _compose(
        [
            A.PadIfNeeded(min_height=size + 2 * pad, min_width=size + 2 * pad, border_mode=cv2.BORDER_REFLECT_101),
            A.RandomCrop(height=size, width=size),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
        ],
        seed,
    )


StrongPolicy = Literal["randaugment", "lesion_safe"]


def check_strong_policy(policy: str) -> None:
    """Raise ValueError unless ``policy`` is one of :data:`StrongPolicy`."""
    if policy not in get_args(StrongPolicy):
        raise ValueError(f"strong_policy must be one of {', '.join(map(repr, get_args(StrongPolicy)))}, got {policy!r}")


def patch_strong_transform(
    size: int,
    pad: int = 2,
    ops: int = 2,
    cutout: float = 0.5,
    policy: StrongPolicy = "randaugment",
    seed: int | None = None,
) -> A.Compose:
    """FixMatch's strong augmentation (Sohn et al. 2020, section 2.3 and appendix D), built from
    albumentations: the weak view's random crop and flips, then ``ops`` operations drawn at random
    (without replacement) from a list, each at a random magnitude, then Cutout: one grey square hole
    with sides up to ``cutout`` of the patch (0 turns it off).

    ``policy`` chooses the list. ``randaugment``: FixMatch's RandAugment-like one at its ranges
    (autocontrast, brightness, colour, contrast, equalise, identity, posterise, rotate, sharpness,
    shear x/y, solarise, translate x/y by up to 30%). ``lesion_safe``: the operations that keep what
    tells a lesion from a look-alike (its colour) and keep a lesion inside its patch: identity,
    rotate, shear x/y, translate x/y by up to 12.5% (4 of 32 px), sharpness, and an exposure change
    of up to 20% (all channels times one factor; photographs differ that much anyway). On the ``scarce``
    preset, FixMatch with ``randaugment`` fell below the ConvNet trained on the labelled patches alone, and without the
    RandAugment operations it came back level (docs/benchmarks.md): solarised, posterised or equalised
    patches train the classifier to ignore the colours that separate exudates from drusen and
    haemorrhages from pigment.

    On lesion patches a large hole can also cover the lesion that makes the patch's label; ``cutout`` is
    a config value (``data.strong_cutout``) for that reason.
    """
    check_strong_policy(policy)
    reflect = cv2.BORDER_REFLECT_101
    if policy == "randaugment":
        candidates = [
            A.AutoContrast(p=1.0),
            A.RandomBrightnessContrast(brightness_limit=(-0.45, 0.45), contrast_limit=0.0, p=1.0),
            A.ColorJitter(brightness=0.0, contrast=0.0, saturation=(0.05, 1.95), hue=0.0, p=1.0),
            A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=(-0.45, 0.45), p=1.0),
            A.Equalize(p=1.0),
            A.NoOp(p=1.0),
            A.Posterize(num_bits=(4, 8), p=1.0),
            A.Affine(rotate=(-30, 30), border_mode=reflect, p=1.0),
            A.Sharpen(alpha=(0.05, 0.95), lightness=(1.0, 1.0), p=1.0),
            A.Affine(shear={"x": (-17, 17), "y": (0, 0)}, border_mode=reflect, p=1.0),
            A.Affine(shear={"x": (0, 0), "y": (-17, 17)}, border_mode=reflect, p=1.0),
            A.Solarize(threshold_range=(0.0, 1.0), p=1.0),
            A.Affine(translate_percent={"x": (-0.3, 0.3), "y": (0, 0)}, border_mode=reflect, p=1.0),
            A.Affine(translate_percent={"x": (0, 0), "y": (-0.3, 0.3)}, border_mode=reflect, p=1.0),
        ]
    else:  # lesion_safe
        candidates = [
            A.NoOp(p=1.0),
            A.Affine(rotate=(-30, 30), border_mode=reflect, p=1.0),
            A.Affine(shear={"x": (-17, 17), "y": (0, 0)}, border_mode=reflect, p=1.0),
            A.Affine(shear={"x": (0, 0), "y": (-17, 17)}, border_mode=reflect, p=1.0),
            A.Affine(translate_percent={"x": (-0.125, 0.125), "y": (0, 0)}, border_mode=reflect, p=1.0),
            A.Affine(translate_percent={"x": (0, 0), "y": (-0.125, 0.125)}, border_mode=reflect, p=1.0),
            A.Sharpen(alpha=(0.05, 0.95), lightness=(1.0, 1.0), p=1.0),
            # exposure: every channel times one factor (an added brightness or a contrast towards grey
            # would shift the hue)
            A.MultiplicativeNoise(multiplier=(0.8, 1.2), per_channel=False, elementwise=False, p=1.0),
        ]
    transforms: list[Any] = [
        A.PadIfNeeded(min_height=size + 2 * pad, min_width=size + 2 * pad, border_mode=reflect),
        A.RandomCrop(height=size, width=size),
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.SomeOf(candidates, n=ops, replace=False, p=1.0),
    ]
    if cutout > 0:
        transforms.append(
            A.CoarseDropout(
                num_holes_range=(1, 1), hole_height_range=(0.0, cutout), hole_width_range=(0.0, cutout), fill=127, p=1.0
            )
        )
    return _compose(transforms, seed)


def patch_table5_transform(size: int, seed: int | None = None) -> A.Compose:
    """Paper 000 Table 5 (ResNet34 baseline): rotations of 0-180 degrees, left-right and up-down
    flips, horizontal and vertical shifts of up to 30%."""
    return _compose(
        [
            A.Affine(
                rotate=(0, 180),
                translate_percent={"x": (-0.3, 0.3), "y": (-0.3, 0.3)},
                border_mode=cv2.BORDER_REFLECT_101,
                p=1.0,
            ),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
        ],
        seed,
    )


def image_train_transform(size: int, seed: int | None = None) -> A.Compose:
    """Whole-image augmentation for grading/segmentation: flips, rotation, mild colour jitter."""
    return _compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.Rotate(limit=180, border_mode=cv2.BORDER_CONSTANT, p=0.5),
            A.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02, p=0.5),
        ],
        seed,
    )
