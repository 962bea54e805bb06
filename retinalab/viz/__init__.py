"""Overlays and plots."""

from .heatmap import localisation_auroc, overlay, patch_heatmap, save_png_atomic, side_by_side

__all__ = ["localisation_auroc", "overlay", "patch_heatmap", "save_png_atomic", "side_by_side"]
