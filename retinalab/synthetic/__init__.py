"""Synthetic fundus photographs with exact lesion masks, written in each dataset's real layout."""

from .fundus import LESION_COUNTS, SyntheticFundus, synth_fundus
from .layouts import WRITERS, write_synthetic

__all__ = ["LESION_COUNTS", "WRITERS", "SyntheticFundus", "synth_fundus", "write_synthetic"]
