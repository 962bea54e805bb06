"""torchmetrics metrics that do not exist upstream."""

from .image_level import ImageLevelScores, image_auroc, to_unit

__all__ = ["ImageLevelScores", "image_auroc", "to_unit"]
