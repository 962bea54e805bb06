"""Active learning (paper 002): expected gradient length, selection rules, exudate patches, oracles
and the resumable loop behind ``retinalab active``."""

from .egl import egl, egl_fc, egl_func, egl_naive, score_pool
from .loop import ActiveLearning
from .oracle import HumanOracle, LabelFileError, LabelsPending, SimulatedOracle
from .pool import ExudatePatchConfig, ExudatePatches, dihedral
from .selection import image_interestingness, select_images, select_random, select_top_k
from .state import LoopState

__all__ = [
    "ActiveLearning",
    "ExudatePatchConfig",
    "ExudatePatches",
    "HumanOracle",
    "LabelFileError",
    "LabelsPending",
    "LoopState",
    "SimulatedOracle",
    "dihedral",
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
