"""The base of the whole-image datamodules (:mod:`retinalab.datamodules.grading`,
:mod:`retinalab.datamodules.segmentation`): reading, splitting by patient, loaders.

Images are decoded and preprocessed (field-of-view crop, resize, max-normalisation) in the
DataLoader workers.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..datasets import FundusRecord, check_reader_args
from ..utils.errors import ConfigError
from .base import FundusDataModule
from .image_datasets import (
    EpochWeightedSampler,
    FundusImageDataset,
    record_target,
    skip_none_collate,
)
from .splits import SplitMode, split_indices
from .transforms import seed_worker_transforms


class _ImageDataModule(FundusDataModule):
    """Split handling shared by the whole-image datamodules."""

    split_mode: SplitMode
    val_size: int | float
    test_size: int | float
    seed: int
    batch_size: int
    num_workers: int

    def _init_common(
        self, dataset: str, root: str, reader_args: dict[str, Any] | None, idrid_subset: str, **kw: Any
    ) -> None:
        """Store the arguments both image datamodules share; IDRiD defaults to ``idrid_subset``."""
        if dataset == "idrid" and not reader_args:
            reader_args = {"subsets": [idrid_subset]}
        self.dataset, self.root, self.reader_args = dataset, root, reader_args or {}
        check_reader_args(dataset, self.reader_args)  # before anything is read
        for name in (
            "image_size",
            "crop_fov",
            "normalize",
            "split_mode",
            "val_size",
            "test_size",
            "seed",
            "batch_size",
            "num_workers",
            "augment",
            "on_error",
            "split_file",
        ):
            setattr(self, name, kw[name])
        self.parts: dict[str, list[FundusRecord]] = {}

    def _split(self, records: list[FundusRecord], strata: list[int] | None) -> dict[str, list[FundusRecord]]:
        if self.split_mode == "test_only":  # an evaluation-only dataset (Messidor under Zoom-in-Net's protocol)
            return {"train": [], "val": [], "test": list(records)}
        official = None
        if self.split_mode == "official":
            official = [r.split for r in records]
            if "test" not in official:
                raise ConfigError(
                    f"split_mode='official' but {self.dataset} has no official test split; use split_mode='random'"
                )
        idx = split_indices([r.group for r in records], self.val_size, self.test_size, self.seed, strata, official)
        return {k: [records[i] for i in v] for k, v in idx.items()}

    def _check_trainable(self) -> None:
        if not self.parts.get("train"):
            raise ConfigError(
                f"{self.dataset}: split_mode={self.split_mode!r} leaves no training images; use `retinalab test` with "
                "it, or another split_mode"
            )

    def _ds(self, part: str, train: bool) -> FundusImageDataset:
        raise NotImplementedError

    def predict_dataloader(self) -> DataLoader:
        """The test images, less those a resumed prediction already wrote."""
        ds = self._ds("test", False)
        done = self.already_predicted()
        if done:
            ds.records = [r for r in ds.records if r.image_id not in done]
        return self._loader(ds, shuffle=False)

    def _loader(self, ds: Dataset, shuffle: bool, batch_size: int | None = None, balanced: bool = False) -> DataLoader:
        sampler = None
        if balanced:  # every label drawn equally often: weights 1 / (images with that label), with replacement
            labels = [record_target(r, ds.target) for r in ds.records]
            counts = Counter(labels)
            weights = torch.tensor([1.0 / counts[y] for y in labels], dtype=torch.double)
            sampler = EpochWeightedSampler(weights, len(labels), seed=self.seed)
        return DataLoader(
            ds,
            batch_size=batch_size or self.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=skip_none_collate,
            worker_init_fn=seed_worker_transforms,
        )
