"""Active learning (paper 002): expected gradient length and the strategies compared with it (entropy,
margin, BALD), selection rules, exudate patches, oracles
and the resumable loop behind ``retinalab active``."""

from .acquisition import ACQUISITIONS, acquisition_scores, bald, entropy, margin, mc_dropout_probs
from .egl import egl, egl_fc, egl_func, egl_naive, score_pool
from .image_selection import EGLChooser
from .loop import ActiveLearning
from .oracle import HumanOracle, LabelFileError, LabelsPending, SimulatedOracle
from .pool import ExudatePatchConfig, ExudatePatches, dihedral
from .selection import image_interestingness, select_images, select_random, select_top_k
from .state import LoopState

__all__ = [
    "ACQUISITIONS",
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
    "image_interestingness",
    "margin",
    "mc_dropout_probs",
    "score_pool",
    "select_images",
    "select_random",
    "select_top_k",
]
