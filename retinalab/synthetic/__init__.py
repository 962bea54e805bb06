"""Synthetic fundus photographs with exact lesion masks, written in each dataset's real layout."""

from .fundus import LESION_COUNTS, SyntheticFundus, synth_fundus
from .layouts import TRUTH_DIR, WRITERS, read_settings, truth_folder, truth_masks, write_synthetic
from .presets import PRESETS, SynthPreset, get_preset

__all__ = ["LESION_COUNTS", "PRESETS", "TRUTH_DIR", "WRITERS", "SynthPreset", "SyntheticFundus", "get_preset", "read_settings", "synth_fundus", "truth_folder", "truth_masks", "write_synthetic"]
