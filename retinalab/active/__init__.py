"""Active learning (paper 002): expected gradient length and the strategies compared with it (entropy,
margin, BALD), selection rules, exudate patches, oracles
and the resumable loop behind ``retinalab active``."""

from .egl import egl, egl_fc, egl_func, egl_naive, score_pool
from .heuristics import (
    HEURISTICS,
    Heuristic,
    acquisition_scores,
    bald,
    entropy,
    get_heuristic,
    heuristic_names,
    margin,
    mc_dropout_probs,
    register_heuristic,
)
from .image_selection import EGLChooser
from .loop import ActiveLearning
from .oracle import HumanOracle, LabelFileError, LabelsPending, SimulatedOracle
from .pool import ExudatePatchConfig, ExudatePatches, dihedral
from .selection import image_interestingness, select_images, select_random, select_top_k
from .state import LoopState

__all__ = [
    "HEURISTICS",
    "Heuristic",
    "ActiveLearning",
    "EGLChooser",
    "ExudatePatchConfig",
    "ExudatePatches",
    "HumanOracle",
    "LabelFileError",
    "LabelsPending",
    "LoopState",
    "SimulatedOracle",
    "acquisition_scores",
    "bald",
    "dihedral",
    "egl",
    "egl_fc",
    "egl_func",
    "egl_naive",
    "entropy",
    "get_heuristic",
    "heuristic_names",
    "image_interestingness",
    "margin",
    "mc_dropout_probs",
    "register_heuristic",
    "score_pool",
    "select_images",
    "select_random",
    "select_top_k",
]
