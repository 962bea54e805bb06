"""One LightningModule per method."""

from .base import PatchTask
from .collaborative import CollaborativeTask
from .fixmatch import FixMatchTask
from .patch_classifier import PatchClassifierTask
from .patch_ssgan import PatchSSGANTask

__all__ = ["CollaborativeTask", "FixMatchTask", "PatchClassifierTask", "PatchSSGANTask", "PatchTask"]
