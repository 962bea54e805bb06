"""LightningDataModules shared by every method."""

from .images import FundusImageDataset, GradingDataModule, SegmentationDataModule, grade_target
from .patch import PatchDataModule, PatchDataset
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
