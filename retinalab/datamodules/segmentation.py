"""Multi-lesion segmentation on whole photographs, with an image-level set beside it: ``SegmentationDataModule``
(paper 001)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pytorch_lightning.utilities import CombinedLoader
from torch.utils.data import DataLoader

from ..datasets import LESIONS, DatasetName, OnError, check_reader_args, read_dataset
from ..datasets.truth import TRUTH_DIR, truth_folder
from ..utils.errors import ConfigError
from .image_datasets import (
    FundusImageDataset,
)
from .images import _ImageDataModule
from .splits import SplitMode, split_indices
from .transforms import image_train_transform


class SegmentationDataModule(_ImageDataModule):
    """Images with the four lesion masks, plus an optional image-level-only set (paper 001).

    The pixel-annotated set is every record of ``dataset`` with lesion masks; with
    ``image_level_dataset`` set, graded images without masks from that dataset form the
    semi-supervised set and the training loader yields ``{"pixel": batch, "image": batch}``.

    Args:
        dataset: reader of the pixel-annotated data (IDRiD segmentation by default).
        root: its folder.
        reader_args: extra reader arguments.
        lesions: lesion masks to stack, in order.
        image_size: side of the preprocessed image.
        image_level_dataset: reader of the image-level set (e.g. ``idrid`` grading or ``eyepacs``).
        image_level_root: its folder.
        image_level_reader_args: its reader arguments.
        image_level_batch_size: batch size of the image-level loader (default ``batch_size``).
        image_level_val_size: validation share of the image-level set (by patient, stratified by grade).
        image_level_test_size: test share of the image-level set; with an official test split (IDRiD
            grading, EyePACS with its solution file) that split is the test set.
        crop_fov: crop to the field of view.
        normalize: divide by the image maximum.
        split_mode: ``official`` or ``random``.
        val_size: validation images or fraction.
        test_size: test images or fraction for ``random``.
        seed: split seed.
        batch_size: images per batch.
        num_workers: DataLoader workers.
        augment: flips, rotations, colour jitter on training images.
        on_error: ``skip`` drops bad rows.
        split_file: where to write the split JSON.
        image_level_sampler: ``shuffle`` or ``balanced`` (every grade drawn equally often) for the
            image-level training loader.
        image_level_truth: where the image-level photographs carry the lesion masks ``retinalab synth``
            drew for them (kept under ``<image_level_root>/_truth``, which no reader looks at; real data
            has none): ``eval`` (default) their validation and test batches carry ``truth_fraction``
            when the root is a synthetic dataset with that folder (paper 001's pseudo-mask quality),
            nothing otherwise; ``all`` the training batches too (``truth``: the ``oracle`` arm), and
            a root without it is an error; ``off`` never.
        eval_masks: ``fraction`` (default): validation and test images also carry each pixel's lesion
            share (``mask_fraction``), which the pixel AUCs weigh, so a mask shrunk from 4288 px keeps its
            lesion area; ``any``: they are scored on the training masks (a pixel is lesion when any of its
            source pixels is, which inflates the lesion area at the boundaries).
    """

    def __init__(
        self,
        dataset: DatasetName = "idrid",
        root: str = "data/idrid",
        reader_args: dict[str, Any] | None = None,
        lesions: list[str] | None = None,
        image_size: int = 512,
        image_level_dataset: DatasetName | None = None,
        image_level_root: str | None = None,
        image_level_reader_args: dict[str, Any] | None = None,
        image_level_batch_size: int | None = None,
        image_level_val_size: int | float = 0.1,
        image_level_test_size: int | float = 0.2,
        crop_fov: bool = True,
        normalize: bool = True,
        split_mode: SplitMode = "official",
        val_size: int | float = 0.15,
        test_size: int | float = 0.2,
        seed: int = 0,
        batch_size: int = 4,
        num_workers: int = 2,
        augment: bool = True,
        on_error: OnError = "raise",
        split_file: str | None = None,
        eval_masks: Literal["fraction", "any"] = "fraction",
        image_level_sampler: Literal["shuffle", "balanced"] = "shuffle",
        image_level_truth: Literal["eval", "all", "off"] = "eval",
    ) -> None:
        super().__init__()
        if image_level_truth not in ("eval", "all", "off"):
            raise ConfigError(f"image_level_truth must be 'eval', 'all' or 'off', got {image_level_truth!r}")
        self.eval_masks, self.image_level_sampler, self.image_level_truth = (
            eval_masks,
            image_level_sampler,
            image_level_truth,
        )
        self.truth_root: Path | None = None  # the image-level root when its photographs carry drawn masks (setup)
        self._init_common(
            dataset,
            root,
            reader_args,
            "segmentation",
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
        self.lesions = tuple(lesions or LESIONS)
        bad = [k for k in self.lesions if k not in LESIONS]
        if bad:
            raise ConfigError(f"lesions {bad} unknown; choose from {list(LESIONS)}")
        self.image_level_dataset, self.image_level_root = image_level_dataset, image_level_root
        self.image_level_reader_args = image_level_reader_args or {}
        self.image_level_batch_size = image_level_batch_size
        self.image_level_val_size, self.image_level_test_size = image_level_val_size, image_level_test_size
        if image_level_dataset is not None and image_level_root is None:
            raise ConfigError("image_level_dataset is set but image_level_root is not")
        if image_level_dataset is not None:
            check_reader_args(image_level_dataset, self.image_level_reader_args, "data.image_level_reader_args")

    def setup(self, stage: str | None = None) -> None:
        if self.parts:
            return
        records = [r for r in self.read_records() if r.has_lesion_masks]
        if not records:
            raise ConfigError(f"{self.dataset} at {self.root}: no image with lesion masks found")
        self.parts = self._split(records, None)
        if self.image_level_dataset is not None:
            self.truth_root = self._truth_root()
            args = {"on_error": self.on_error, **self.image_level_reader_args}
            if self.image_level_dataset == "idrid" and "subsets" not in args:
                args["subsets"] = ["grading"]
            extra = read_dataset(self.image_level_dataset, self.image_level_root, **args)
            held = {r.image_path for p in ("val", "test") for r in self.parts[p]}
            extra = [r for r in extra if not r.has_lesion_masks and r.image_path not in held and r.grade is not None]
            if not extra:
                raise ConfigError(
                    f"{self.image_level_dataset} at {self.image_level_root}: no graded images without masks"
                )
            official = [r.split for r in extra] if any(r.split == "test" for r in extra) else None
            idx = split_indices(
                [r.group for r in extra],
                self.image_level_val_size,
                self.image_level_test_size,
                self.seed,
                [int(r.grade) for r in extra],
                official,
            )
            for part, name in (("train", "image_level"), ("val", "image_level_val"), ("test", "image_level_test")):
                self.parts[name] = [extra[i] for i in idx[part]]
        self.write_split(
            {k: [r.image_id for r in v] for k, v in self.parts.items()},
            {"dataset": self.dataset, "root": str(self.root), "seed": self.seed, "counts": self.summary()},
        )

    def _truth_root(self) -> Path | None:
        """The image-level root when ``image_level_truth`` wants its drawn masks and it has them."""
        if self.image_level_truth == "off":
            return None
        root = Path(str(self.image_level_root)).expanduser()
        if truth_folder(root) is None:
            if self.image_level_truth == "all":
                raise ConfigError(
                    f"data.image_level_truth: all (the oracle arm) needs the lesion masks retinalab synth keeps under "
                    f"{root / TRUTH_DIR}; {root} has none (not a synthetic dataset, or drawn by an older retinalab): "
                    f"draw it again with retinalab synth, or use image_level_truth: eval"
                )
            return None
        return root

    def summary(self) -> dict[str, dict[str, int]]:
        return {k: {"images": len(v)} for k, v in self.parts.items()}

    def _ds(self, part: str, train: bool, with_masks: bool = True) -> FundusImageDataset:
        tf = image_train_transform(self.image_size) if (train and self.augment) else None
        truth = None
        if (
            part.startswith("image_level")
            and self.truth_root is not None
            and (not train or self.image_level_truth == "all")
        ):
            truth = self.truth_root
        return FundusImageDataset(
            self.parts[part],
            self.image_size,
            "grade",
            with_masks,
            self.lesions,
            tf,
            self.crop_fov,
            self.normalize,
            self.on_error,
            mask_fraction=not train and self.eval_masks == "fraction",
            truth_dataset_root=truth,
        )

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        self._check_trainable()
        pixel = self._loader(self._ds("train", True), shuffle=True)
        if "image_level" not in self.parts:
            return pixel
        image = self._loader(
            self._ds("image_level", True, with_masks=False),
            True,
            self.image_level_batch_size,
            balanced=self.image_level_sampler == "balanced",
        )
        return CombinedLoader({"pixel": pixel, "image": image}, mode="max_size_cycle")

    def _eval_loaders(self, part: str) -> DataLoader | list[DataLoader]:
        """The pixel-annotated ``part``; with an image-level set, also its ``part`` (dataloader_idx 1)."""
        pixel = self._loader(self._ds(part, False), shuffle=False)
        if f"image_level_{part}" not in self.parts or not self.parts[f"image_level_{part}"]:
            return pixel
        return [
            pixel,
            self._loader(self._ds(f"image_level_{part}", False, with_masks=False), False, self.image_level_batch_size),
        ]

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._eval_loaders("val")

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._eval_loaders("test")
