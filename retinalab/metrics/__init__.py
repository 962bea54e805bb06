"""torchmetrics metrics that do not exist upstream."""

from .image_level import ImageLevelScores

__all__ = ["ImageLevelScores"]
