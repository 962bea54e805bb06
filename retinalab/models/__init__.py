"""Plain ``nn.Module`` networks and a factory for patch classifiers."""

from __future__ import annotations

from typing import Literal

from torch import nn

from .convlarge import ConvLarge

PatchBackbone = Literal["convnet", "resnet18", "resnet34", "resnet50"]


def build_patch_model(
    name: str, num_classes: int = 2, width: float = 1.0, pretrained_path: str | None = None, weights: str | None = None, **kwargs
) -> nn.Module:
    """Patch classifier by name: ``convnet`` (paper 000's conv-large) or a timm ResNet.

    ResNets train from scratch unless ``weights`` (``imagenet``, ``hf-hub:<id>`` or a local file; see
    :mod:`retinalab.weights`) or ``pretrained_path`` (a local file, as before) says otherwise; the
    classifier is replaced for ``num_classes`` outputs and the input is normalised with the weights'
    mean and std.

    Raises:
        ConfigError: an unknown name (listing the options), pretrained weights for ``convnet``, both
            ``weights`` and ``pretrained_path``, or a local file that does not exist.
        WeightsNotFoundError: hub weights neither cached nor reachable.
    """
    from ..utils.errors import ConfigError

    if weights and pretrained_path:
        raise ConfigError("set weights or pretrained_path (the older name of a local weights file), not both")
    weights = weights or pretrained_path
    if name == "convnet":
        if weights:
            raise ConfigError("pretrained weights are only for the timm backbones (resnet18/34/50), not 'convnet'")
        return ConvLarge(num_classes=num_classes, width=width, **kwargs)
    if name in ("resnet18", "resnet34", "resnet50"):
        from ..weights import create_timm_model

        return create_timm_model(name, weights, num_classes=num_classes, **kwargs)
    raise ConfigError(f"unknown patch model {name!r}; choose one of ['convnet', 'resnet18', 'resnet34', 'resnet50']")


__all__ = ["ConvLarge", "PatchBackbone", "build_patch_model"]
