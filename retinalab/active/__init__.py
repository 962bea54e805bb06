"""Active learning (paper 002): expected gradient length and selection."""

from .egl import egl, egl_fc, egl_func, egl_naive, score_pool

__all__ = ["egl", "egl_fc", "egl_func", "egl_naive", "score_pool"]
