"""One LightningModule per method."""

from .base import PatchTask
from .patch_classifier import PatchClassifierTask
from .patch_ssgan import PatchSSGANTask

__all__ = ["PatchClassifierTask", "PatchSSGANTask", "PatchTask"]
