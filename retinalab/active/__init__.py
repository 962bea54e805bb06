"""Active learning (paper 002): expected gradient length and selection."""

from .egl import egl, egl_fc, egl_func, egl_naive, score_pool
from .selection import image_interestingness, select_images, select_random, select_top_k

__all__ = [
    "egl",
    "egl_fc",
    "egl_func",
    "egl_naive",
    "image_interestingness",
    "score_pool",
    "select_images",
    "select_random",
    "select_top_k",
]
