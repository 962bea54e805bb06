"""Preprocessing: decoding, field-of-view crop, normalisation, patch grid, patch cache."""

from .building import default_cache_dir
from .cache import PatchCache, PatchCacheConfig, cache_key
from .fundus import FovBox, Preprocessed, find_fov, load_fundus, normalize_max, stack_masks
from .io import image_size, read_image, read_mask
from .patches import DISEASED, HEALTHY, UNKNOWN, PatchGrid

__all__ = [
    "DISEASED",
    "HEALTHY",
    "UNKNOWN",
    "FovBox",
    "PatchCache",
    "PatchCacheConfig",
    "PatchGrid",
    "Preprocessed",
    "cache_key",
    "default_cache_dir",
    "find_fov",
    "image_size",
    "load_fundus",
    "normalize_max",
    "read_image",
    "read_mask",
    "stack_masks",
]
