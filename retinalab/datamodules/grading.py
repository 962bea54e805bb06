"""DR grading on whole photographs: ``GradingDataModule`` (paper 000 appendix B's ResNet50, paper 001's grader)."""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from torch.utils.data import DataLoader

from ..datasets import DatasetName, OnError
from ..utils.errors import ConfigError
from .image_datasets import (
    NUM_GRADES,
    FundusImageDataset,
    GradeTarget,
    record_target,
)
from .images import _ImageDataModule
from .splits import SplitMode
from .transforms import image_train_transform


class GradingDataModule(_ImageDataModule):
    """Image-level DR grades, as a 5-class (4 for Messidor) or binary problem.

    Args:
        dataset: reader name.
        root: dataset folder.
        reader_args: extra reader arguments (IDRiD defaults to its ``grading`` subset).
        target: ``grade``; ``referable`` (1 = grade >= 2); ``normal`` (1 = grade 0).
        image_size: side of the preprocessed image.
        crop_fov: crop to the field of view.
        normalize: divide by the image maximum.
        split_mode: ``official`` (where the dataset has a test split), ``random``, or ``test_only``
            (every image is a test image: an evaluation-only dataset such as Messidor).
        val_size: validation images or fraction (carved from the training split).
        test_size: test images or fraction for ``random``.
        seed: split seed.
        batch_size: images per batch.
        num_workers: DataLoader workers (decode happens there).
        augment: flips, rotations, colour jitter on training images.
        on_error: ``skip`` drops label rows whose image is missing.
        split_file: where to write the split JSON.
        sampler: ``shuffle`` (each training image once per epoch) or ``balanced`` (every label drawn
            equally often, with replacement: IDRiD's grades 0 and 2 are 4-8x as frequent as 1 and 4).
    """

    def __init__(
        self,
        dataset: DatasetName = "idrid",
        root: str = "data/idrid",
        reader_args: dict[str, Any] | None = None,
        target: GradeTarget = "grade",
        image_size: int = 512,
        crop_fov: bool = True,
        normalize: bool = True,
        split_mode: SplitMode = "official",
        val_size: int | float = 0.1,
        test_size: int | float = 0.2,
        seed: int = 0,
        batch_size: int = 16,
        num_workers: int = 2,
        augment: bool = True,
        on_error: OnError = "raise",
        split_file: str | None = None,
        sampler: Literal["shuffle", "balanced"] = "shuffle",
    ) -> None:
        super().__init__()
        self.sampler = sampler
        self._init_common(
            dataset,
            root,
            reader_args,
            "grading",
            image_size=image_size,
            crop_fov=crop_fov,
            normalize=normalize,
            split_mode=split_mode,
            val_size=val_size,
            test_size=test_size,
            seed=seed,
            batch_size=batch_size,
            num_workers=num_workers,
            augment=augment,
            on_error=on_error,
            split_file=split_file,
        )
        self.target = target

    @property
    def num_classes(self) -> int:
        return NUM_GRADES.get(self.dataset, 5) if self.target == "grade" else 2

    def setup(self, stage: str | None = None) -> None:
        if self.parts:
            return
        records = [r for r in self.read_records() if record_target(r, self.target) is not None]
        if not records:
            raise ConfigError(f"{self.dataset} at {self.root}: no image labelled for target={self.target!r}")
        self.parts = self._split(records, [record_target(r, self.target) for r in records])
        self.write_split(
            {k: [r.image_id for r in v] for k, v in self.parts.items()},
            {"dataset": self.dataset, "root": str(self.root), "seed": self.seed, "counts": self.summary()},
        )

    def summary(self) -> dict[str, dict[str, int]]:
        """Images per label in each part."""
        return {
            k: {f"label_{lab}": n for lab, n in sorted(Counter(record_target(r, self.target) for r in v).items())}
            | {"images": len(v)}
            for k, v in self.parts.items()
        }

    def _ds(self, part: str, train: bool) -> FundusImageDataset:
        tf = image_train_transform(self.image_size) if (train and self.augment) else None
        return FundusImageDataset(
            self.parts[part],
            self.image_size,
            self.target,
            False,
            transform=tf,
            crop_fov=self.crop_fov,
            normalize=self.normalize,
            on_error=self.on_error,
        )

    def train_dataloader(self) -> DataLoader:
        self._check_trainable()
        return self._loader(self._ds("train", True), shuffle=True, balanced=self.sampler == "balanced")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._ds("val", False), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._ds("test", False), shuffle=False)
