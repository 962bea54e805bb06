"""Plain ``nn.Module`` networks and a factory for patch classifiers."""

from __future__ import annotations

from typing import Literal

from torch import nn

from .convlarge import ConvLarge

PatchBackbone = Literal["convnet", "resnet18", "resnet34", "resnet50"]


def build_patch_model(name: str, num_classes: int = 2, width: float = 1.0, **kwargs) -> nn.Module:
    """Patch classifier by name: ``convnet`` (paper 000's conv-large) or a timm ResNet (from scratch).

    Raises:
        ValueError: for an unknown name, listing the options.
    """
    if name == "convnet":
        return ConvLarge(num_classes=num_classes, width=width, **kwargs)
    if name in ("resnet18", "resnet34", "resnet50"):
        import timm

        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    raise ValueError(f"unknown patch model {name!r}; choose one of ['convnet', 'resnet18', 'resnet34', 'resnet50']")


__all__ = ["ConvLarge", "PatchBackbone", "build_patch_model"]
