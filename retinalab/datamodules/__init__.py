"""LightningDataModules shared by every method."""

from .grading import GradingDataModule
from .image_datasets import FundusImageDataset, grade_target
from .patch import PatchDataModule, PatchDataset
from .segmentation import SegmentationDataModule
from .splits import choose_labeled, split_indices

__all__ = [
    "FundusImageDataset",
    "GradingDataModule",
    "PatchDataModule",
    "PatchDataset",
    "SegmentationDataModule",
    "choose_labeled",
    "grade_target",
    "split_indices",
]
