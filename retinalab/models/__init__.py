"""Plain ``nn.Module`` networks and a factory for patch classifiers."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from torch import nn

from .convlarge import ConvLarge

PatchBackbone = Literal["convnet", "resnet18", "resnet34", "resnet50"]


def build_patch_model(
    name: str, num_classes: int = 2, width: float = 1.0, pretrained_path: str | None = None, **kwargs
) -> nn.Module:
    """Patch classifier by name: ``convnet`` (paper 000's conv-large) or a timm ResNet.

    ResNets train from scratch unless ``pretrained_path`` names a local weight file (a timm/torchvision
    ``state_dict`` saved with ``torch.save`` or a ``.safetensors`` file); its classifier is replaced for
    ``num_classes`` outputs. Nothing is ever downloaded.

    Raises:
        ValueError: for an unknown name, listing the options, or pretrained weights for ``convnet``.
        FileNotFoundError: if ``pretrained_path`` does not exist.
    """
    if name == "convnet":
        if pretrained_path:
            raise ValueError("pretrained_path is only for the timm backbones (resnet18/34/50), not 'convnet'")
        return ConvLarge(num_classes=num_classes, width=width, **kwargs)
    if name in ("resnet18", "resnet34", "resnet50"):
        import timm

        if pretrained_path is None:
            return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
        path = Path(pretrained_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained_path={str(path)!r} does not exist (weights are read from local files only)")
        return timm.create_model(name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    raise ValueError(f"unknown patch model {name!r}; choose one of ['convnet', 'resnet18', 'resnet34', 'resnet50']")


__all__ = ["ConvLarge", "PatchBackbone", "build_patch_model"]
