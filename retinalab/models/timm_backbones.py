"""timm's ResNets as registered backbones (``resnet18``, ``resnet34``, ``resnet50``): from scratch unless
``weights`` says otherwise (:mod:`retinalab.weights`), usable as paper 001's grader."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .backbones import RESNET_SPLIT, register_backbone


def _timm_resnet(arch: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, width: float, weights: str | None, normalise: bool = True) -> nn.Module:
        from ..weights import create_timm_model

        return create_timm_model(arch, weights, normalise=normalise, num_classes=num_classes)

    build.__qualname__ = f"_timm_resnet.{arch}"
    return build


for _arch in ("resnet18", "resnet34", "resnet50"):
    register_backbone(_arch, pretrained=True, grading_split=RESNET_SPLIT)(_timm_resnet(_arch))
