"""Plain ``nn.Module`` networks, and the backbone registry the tasks build them from by name."""

from __future__ import annotations

from .backbones import (
    BACKBONES,
    Backbone,
    build_patch_model,
    get_backbone,
    grading_backbones,
    register_backbone,
)
from .convlarge import ConvLarge

# isort: split
from . import timm_backbones  # noqa: F401  (registers resnet18/34/50, listed after convnet)

#: a registered backbone's name (``retinalab.models.BACKBONES``), or ``module:name`` of a module registering one
PatchBackbone = str

__all__ = [
    "BACKBONES",
    "Backbone",
    "ConvLarge",
    "PatchBackbone",
    "build_patch_model",
    "get_backbone",
    "grading_backbones",
    "register_backbone",
]
