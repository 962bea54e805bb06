"""Active learning (paper 002): expected gradient length and the heuristics compared with it (entropy,
margin, BALD, random), Algorithms 1 and 2 (strategies), exudate patches, oracles, the learner, the run
folder (store) and the resumable loop behind ``retinalab active`` that composes them."""

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
from .options import RunOptions
from .oracle import HumanOracle, LabelFileError, LabelsPending, SimulatedOracle
from .pool import ExudatePatchConfig, ExudatePatches, dihedral
from .selection import image_interestingness, select_images, select_random, select_top_k
from .state import LoopState
from .store import RunStore
from .strategies import Query, Strategy

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
    "Query",
    "RunOptions",
    "RunStore",
    "Strategy",
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
