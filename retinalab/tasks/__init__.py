"""One LightningModule per method."""

from .patch_classifier import PatchClassifierTask

__all__ = ["PatchClassifierTask"]
