"""Overlays and plots."""

from .heatmap import localisation_auroc, overlay, patch_heatmap, side_by_side
from .lesions import LESION_COLOURS, lesion_overlay
from .logging import log_overlays

__all__ = [
    "LESION_COLOURS",
    "lesion_overlay",
    "localisation_auroc",
    "log_overlays",
    "overlay",
    "patch_heatmap",
    "side_by_side",
]
