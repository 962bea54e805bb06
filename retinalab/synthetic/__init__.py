"""Synthetic fundus photographs with exact lesion masks, written in each dataset's real layout."""

from ..datasets.truth import TRUTH_DIR, read_settings, truth_folder, truth_masks
from .fundus import LESION_COUNTS, SyntheticFundus, synth_fundus
from .layouts import WRITERS, write_synthetic
from .presets import PRESETS, SynthPreset, get_preset

__all__ = [
    "LESION_COUNTS",
    "PRESETS",
    "TRUTH_DIR",
    "WRITERS",
    "SynthPreset",
    "SyntheticFundus",
    "get_preset",
    "read_settings",
    "synth_fundus",
    "truth_folder",
    "truth_masks",
    "write_synthetic",
]
