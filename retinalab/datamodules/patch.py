"""Patch datamodule shared by the patch methods (paper 000's SSL-GAN and baselines, EGL patches).

Images are split (by patient where the dataset has patients) into train/val/test; ``num_labeled_images``
training images are labelled, the rest of the training split is unlabelled and its labels never
reach the model. Patches come from the on-disk :class:`~retinalab.preprocessing.PatchCache`, built once:
no image is decoded during an epoch.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Literal

import numpy as np
from pytorch_lightning.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset, RandomSampler

from ..datasets import DatasetName, OnError, check_reader_args
from ..preprocessing import PatchCache, PatchCacheConfig, PatchGrid
from ..utils.errors import ConfigError
from .base import FundusDataModule, describe_counts
from .patch_datasets import CachedImagePatches, CachedImages, FolderImagePatches, PatchDataset, folder_images
from .splits import LabeledChooser, SplitMode, patch_split
from .transforms import (
    StrongPolicy,
    default_seed,
    image_train_transform,
    patch_strong_transform,
    patch_table5_transform,
    patch_train_transform,
    seed_worker_transforms,
)

log = logging.getLogger(__name__)


class PatchDataModule(FundusDataModule):
    """Labelled / unlabelled / val / test patches of a fundus dataset.

    Paper 000's default: IDRiD's 81 segmentation images plus its grade-0 disease-grading images
    (patches all healthy) = 249 images, split 149/50/50 at random, 8x8 grid of 128 px patches at
    1024 px, downsampled to 32 px.

    Args:
        dataset: which reader (``idrid``, ``eophtha``, ``eyepacs``, ``messidor``).
        root: dataset folder.
        reader_args: extra reader arguments (e.g. ``{"subsets": ["segmentation"]}``).
        image_size: side of the preprocessed image.
        patch_size: side of a patch at ``image_size``.
        stride: grid step (``patch_size`` = non-overlapping).
        patch_out: side patches are downsampled to.
        crop_fov: crop to the field of view before resizing.
        normalize: divide by the image's maximum intensity.
        fast_decode: reduced-size JPEG decoding.
        grade0_healthy: grade-0 images without masks have all-healthy patches (paper 000).
        include_unknown: add images whose patch labels are unknown (no mask, grade > 0) to the
            unlabelled pool; they never enter val/test.
        split_mode: ``random`` (paper 000) or ``official`` (the dataset's own test split).
        val_size: validation images (int) or fraction (float < 1).
        test_size: test images (int) or fraction; ignored with ``split_mode=official``.
        stratify: keep the diseased/healthy image ratio in val/test (random within each class).
        num_labeled_images: labelled training images (int), fraction (float < 1), or ``None`` for all.
        labeled_selection: how they are chosen: ``None`` at random (papers 000/001: a seeded
            permutation), or a :class:`~retinalab.datamodules.splits.LabeledChooser`, e.g.
            ``retinalab.active.EGLChooser`` (an EGL active learner, paper 002's Algorithm 2); both give
            nested sets across counts.
        unlabeled: also serve unlabelled training patches (semi-supervised methods): the training
            loader then yields ``{"labeled": batch, "unlabeled": batch}``, labelled batches cycled.
        unlabeled_ratio: unlabelled patches per labelled patch in a training batch (FixMatch's mu;
            the unlabelled batches hold ``unlabeled_ratio * batch_size`` patches).
        unlabeled_strong: also serve a strongly augmented view of every unlabelled patch
            (``image_strong``, :func:`~retinalab.datamodules.transforms.patch_strong_transform`), the
            weak view being ``image`` (FixMatch).
        strong_ops: RandAugment-like operations per strong view (FixMatch: 2).
        strong_cutout: largest side of the strong view's Cutout hole, as a fraction of the patch
            (FixMatch: 0.5; 0: none).
        strong_policy: the strong view's operations: ``randaugment`` (FixMatch's) or ``lesion_safe``
            (those that keep a lesion's colour and keep it inside its patch; see
            :func:`~retinalab.datamodules.transforms.patch_strong_transform`).
        unlabeled_pool: which training images feed the unlabelled stream: ``all`` (default; every
            training image, the labelled ones included with their labels hidden, as Salimans et al.'s
            code does, so the 149/149 column of paper 000's Tables 1-2 runs) or ``rest`` (only the
            images that are not labelled).
        batches_per_epoch: training batches per epoch. ``None``: one pass over the labelled patches
            (or, with ``unlabeled``, over the longer of the two streams); an int: that many batches,
            the labelled patches cycled in fresh permutations; ``"unlabeled"``: as many as one pass
            over the unlabelled pool takes, so a supervised baseline makes as many optimiser steps
            per epoch as the SSL-GAN's discriminator (equal compute at equal epochs).
        seed: seed of the split and of the labelled subset.
        batch_size: patches per batch (paper 000: 100).
        num_workers: DataLoader workers.
        cache_dir: parent folder of the patch cache (default ``$RETINALAB_CACHE`` or ``~/.cache/retinalab``).
        cache_workers: processes that build the cache (-1 = all cores).
        augment: augment training patches.
        augment_policy: ``crop_flip`` (paper 000 appendix A: random crops and flips, for the GAN and
            ConvNet) or ``table5`` (rotations 0-180, flips, shifts up to 30%: the ResNet34 baseline).
        on_error: ``skip`` drops unreadable images (logged and counted) instead of failing.
        split_file: where to write the split JSON (default ``<log_dir>/split.json``).
        predict_split: which part ``retinalab predict`` scores (``test``, ``val``, ``train``,
            ``labeled``, ``unlabeled`` or ``all``), one image per step.
        predict_folder: score a plain folder of photographs instead (no labels needed).
        serve: ``patches`` (default) or ``images``: whole preprocessed images at ``thumb_size`` px
            with image-level labels (any lesion), on the same split and labelled subset, for
            whole-image baselines (paper 000 appendix B).
        thumb_size: side of the cached whole-image copy (overlays, ``serve: images``).
    """

    def __init__(
        self,
        dataset: DatasetName = "idrid",
        root: str = "data/idrid",
        reader_args: dict[str, Any] | None = None,
        image_size: int = 1024,
        patch_size: int = 128,
        stride: int = 128,
        patch_out: int = 32,
        crop_fov: bool = True,
        normalize: bool = True,
        fast_decode: bool = True,
        grade0_healthy: bool = True,
        include_unknown: bool = False,
        split_mode: SplitMode = "random",
        val_size: int | float = 0.2,
        test_size: int | float = 0.2,
        stratify: bool = True,
        num_labeled_images: int | float | None = None,
        labeled_selection: LabeledChooser | None = None,
        unlabeled: bool = False,
        unlabeled_ratio: int = 1,
        unlabeled_strong: bool = False,
        strong_ops: int = 2,
        strong_cutout: float = 0.5,
        strong_policy: StrongPolicy = "randaugment",
        unlabeled_pool: Literal["all", "rest"] = "all",
        batches_per_epoch: int | Literal["unlabeled"] | None = None,
        seed: int = 0,
        batch_size: int = 100,
        num_workers: int = 0,
        cache_dir: str | None = None,
        cache_workers: int = -1,
        augment: bool = True,
        augment_policy: Literal["crop_flip", "table5"] = "crop_flip",
        on_error: OnError = "raise",
        split_file: str | None = None,
        predict_split: Literal["test", "val", "train", "labeled", "unlabeled", "all"] = "test",
        predict_folder: str | None = None,
        serve: Literal["patches", "images"] = "patches",
        thumb_size: int = 256,
    ) -> None:
        super().__init__()
        self.serve = serve
        self.dataset, self.root, self.reader_args = dataset, root, reader_args or {}
        check_reader_args(dataset, self.reader_args)  # before anything is read
        self.predict_split, self.predict_folder = predict_split, predict_folder
        self.cache_config = PatchCacheConfig(
            grid=PatchGrid(image_size, patch_size, stride, patch_out),
            crop_fov=crop_fov,
            normalize=normalize,
            fast_decode=fast_decode,
            grade0_healthy=grade0_healthy,
            thumb_size=thumb_size,
        )
        # the parser checks every type and choice; what a type cannot say is checked here
        if split_mode == "test_only":  # a choice of SplitMode that the image datamodules have, not this one
            raise ConfigError(
                "PatchDataModule: split_mode must be 'random' or 'official', got 'test_only' (score a whole dataset "
                "with --data.predict_split all)"
            )
        if unlabeled_ratio < 1:
            raise ConfigError(f"unlabeled_ratio must be a positive int (FixMatch's mu), got {unlabeled_ratio!r}")
        if not 0 <= strong_cutout <= 1 or strong_ops < 0:
            raise ConfigError(
                f"strong_cutout must lie in [0, 1] and strong_ops be >= 0, got {strong_cutout!r} and {strong_ops!r}"
            )
        if isinstance(batches_per_epoch, int) and batches_per_epoch < 1:
            raise ConfigError(
                f"batches_per_epoch must be a positive int, 'unlabeled' or None, got {batches_per_epoch!r}"
            )
        self.include_unknown = include_unknown
        self.split_mode, self.val_size, self.test_size, self.stratify = split_mode, val_size, test_size, stratify
        self.num_labeled_images, self.unlabeled, self.seed = num_labeled_images, unlabeled, seed
        self.unlabeled_pool, self.unlabeled_ratio, self.unlabeled_strong = (
            unlabeled_pool,
            unlabeled_ratio,
            unlabeled_strong,
        )
        self.strong_ops, self.strong_cutout, self.strong_policy = strong_ops, strong_cutout, strong_policy
        self.batches_per_epoch = batches_per_epoch
        self.labeled_selection = labeled_selection
        self.batch_size, self.num_workers = batch_size, num_workers
        self.cache_dir, self.cache_workers = cache_dir, cache_workers
        self.augment, self.augment_policy = augment, augment_policy
        self.on_error, self.split_file = on_error, split_file
        self.cache: PatchCache | None = None
        self.rows: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ building
    def _build_cache(self, progress: bool = True) -> PatchCache:
        records = self.read_records()
        return PatchCache.build(
            records,
            cache_dir=self.cache_dir,
            config=self.cache_config,
            name=self.dataset,
            num_workers=self.cache_workers,
            on_error=self.on_error,
            progress=progress,
        )

    def prepare_data(self) -> None:
        """Build the patch cache once (Lightning calls this on one process per node)."""
        if self.predict_folder is not None and self.trainer is not None and self.trainer.state.fn == "predict":
            return  # scoring a plain folder needs no dataset
        self._build_cache()

    @property
    def grid(self) -> PatchGrid:
        """The grid predictions are laid on (one whole-image "patch" with ``serve: images``)."""
        if self.serve == "images":
            t = self.cache_config.thumb_size
            return PatchGrid(t, t, t, t)
        return self.cache_config.grid

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict" and self.predict_folder is not None:
            folder_images(self.predict_folder)  # a missing or empty folder: refused before anything is written
            return
        if self.cache is not None:
            return
        self.cache = cache = self._build_cache(progress=False)
        self.rows = patch_split(
            cache,
            self.split_mode,
            self.val_size,
            self.test_size,
            self.seed,
            stratify=self.stratify,
            num_labeled_images=self.num_labeled_images,
            labeled_selection=self.labeled_selection,
            unlabeled_pool=self.unlabeled_pool,
            include_unknown=self.include_unknown,
            source=f"{self.dataset} at {self.root}",
        )
        if stage in (None, "fit"):
            self._check_training()  # before split.json (and the run's config and manifest) is written
        ids = {k: [cache.images[i]["image_id"] for i in v] for k, v in self.rows.items()}
        self.split_hash = self.write_split(
            ids,
            {
                "dataset": self.dataset,
                "root": str(self.root),
                "seed": self.seed,
                "num_labeled_images": self.num_labeled_images,
                "labeled_selection": "random" if self.labeled_selection is None else self.labeled_selection.name,
                "unlabeled_pool": self.unlabeled_pool,
                "cache": str(cache.path),
                "counts": self.summary(),
            },
        )
        log.info("patch data: %s", describe_counts(self.summary()))

    def summary(self) -> dict[str, dict[str, int]]:
        """Images and patches per class in each part (labels of unlabelled images included for the record)."""
        assert self.cache is not None
        out = {}
        for part, rows in self.rows.items():
            img = Counter(int(self.cache.image_labels[i]) for i in rows)
            lab = self.cache.labels[rows] if len(rows) else np.zeros((0,), np.int8)
            out[part] = {
                "images": len(rows),
                "images_diseased": img.get(1, 0),
                "images_healthy": img.get(0, 0),
                "patches": int(lab.size),
                "patches_diseased": int((lab == 1).sum()),
                "patches_healthy": int((lab == 0).sum()),
            }
        return out

    def image_ids(self, rows: np.ndarray | list[int]) -> list[str]:
        assert self.cache is not None
        return [self.cache.images[int(i)]["image_id"] for i in rows]

    def class_counts(self) -> np.ndarray:
        """Healthy/diseased counts of the labelled training samples (patches, or images with
        ``serve: images``), for class-balanced losses."""
        assert self.cache is not None
        rows = self.rows["labeled"]
        lab = self.cache.image_labels[rows] if self.serve == "images" else self.cache.labels[rows].ravel()
        return np.array([(lab == 0).sum(), (lab == 1).sum()], dtype=np.int64)

    # ------------------------------------------------------------------ loaders
    def _loader(
        self,
        rows: np.ndarray,
        train: bool,
        hide: bool = False,
        num_batches: int | None = None,
        batch_size: int | None = None,
        strong: bool = False,
    ) -> DataLoader:
        """A loader over ``rows``; ``num_batches`` makes an epoch that many batches, drawn from
        successive random permutations of the data (so a small labelled set is cycled); ``strong``
        adds FixMatch's strongly augmented view (``image_strong``)."""
        assert self.cache is not None
        batch_size = batch_size or self.batch_size
        tf = None
        # the unlabelled loader's augmentations draw a stream of their own (with one seed for both, the
        # labelled and unlabelled batches were augmented alike, draw for draw)
        seed = default_seed(stream=1 if hide else 0)
        if self.serve == "images":
            tf = image_train_transform(self.cache_config.thumb_size, seed=seed) if (train and self.augment) else None
            ds: Dataset = CachedImages(self.cache, rows, tf, hide_labels=hide)
        else:
            if train and self.augment:
                make = patch_table5_transform if self.augment_policy == "table5" else patch_train_transform
                tf = make(self.cache_config.grid.out_size, seed=seed)
            # the strong view draws a stream of its own (stream 2), apart from the weak view's
            strong_tf = (
                patch_strong_transform(
                    self.cache_config.grid.out_size,
                    ops=self.strong_ops,
                    cutout=self.strong_cutout,
                    policy=self.strong_policy,
                    seed=default_seed(stream=2),
                )
                if strong
                else None
            )
            ds = PatchDataset(self.cache, rows, tf, hide_labels=hide, strong_transform=strong_tf)
        sampler = RandomSampler(ds, num_samples=num_batches * batch_size) if num_batches is not None else None
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=train if sampler is None else None,
            sampler=sampler,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=seed_worker_transforms,
        )

    def train_batches_per_epoch(self) -> int | None:
        """Batches per training epoch set by ``batches_per_epoch`` (``None``: one pass)."""
        if self.batches_per_epoch != "unlabeled":
            return self.batches_per_epoch
        samples = len(self.rows["unlabeled"]) * (1 if self.serve == "images" else self.cache_config.grid.num_patches)
        return max(1, -(-samples // self.batch_size))

    def _check_training(self) -> None:
        """Refuse a training set that cannot train (checked in :meth:`setup`, before anything is written)."""
        if len(self.rows["labeled"]) == 0:
            raise ConfigError("num_labeled_images=0: there is no labelled training image")
        if self.batches_per_epoch == "unlabeled" and len(self.rows["unlabeled"]) == 0:
            raise ConfigError(
                "batches_per_epoch='unlabeled' but the unlabelled pool is empty; set unlabeled_pool: all or an int"
            )
        if self.unlabeled and len(self.rows["unlabeled"]) == 0:
            raise ConfigError(
                "unlabeled=True but the unlabelled pool is empty: every training image is labelled and "
                "unlabeled_pool='rest'; use unlabeled_pool: all or lower num_labeled_images"
            )
        if self.unlabeled and self.unlabeled_strong and self.serve == "images":
            raise ConfigError("unlabeled_strong (FixMatch's strong view) is for patches; set serve: patches")

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        self._check_training()
        n = self.train_batches_per_epoch()
        labeled = self._loader(self.rows["labeled"], train=True, num_batches=n)
        if not self.unlabeled:
            return labeled
        unlabeled = self._loader(
            self.rows["unlabeled"],
            train=True,
            hide=True,
            num_batches=n,
            batch_size=self.batch_size * self.unlabeled_ratio,
            strong=self.unlabeled_strong,
        )
        return CombinedLoader({"labeled": labeled, "unlabeled": unlabeled}, mode="max_size_cycle")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.rows["val"], train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.rows["test"], train=False)

    def predict_dataloader(self) -> DataLoader:
        """One image per step (all its patches): a cached split, or ``predict_folder``."""
        if self.predict_folder is not None:
            ds: Dataset = FolderImagePatches(
                self.predict_folder, self.cache_config, self.serve == "images", self.already_predicted()
            )
        else:
            assert self.cache is not None
            rows = np.arange(len(self.cache)) if self.predict_split == "all" else self.rows[self.predict_split]
            ds = CachedImagePatches(self.cache, rows, self.serve == "images", self.already_predicted())
        # decoding runs in the loader's workers; with return_predictions=False (retinalab's default)
        # nothing is kept per image, so memory stays flat over any number of images
        return DataLoader(ds, batch_size=None, shuffle=False, num_workers=self.num_workers)
