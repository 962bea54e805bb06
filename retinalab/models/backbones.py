"""The backbone registry: every network a task builds by name (``backbone: convnet``).

A backbone is one decorated builder, ``build(num_classes, width, weights, **options) -> nn.Module``::

    @register_backbone("tiny", options=("dropout",))
    def tiny(num_classes: int, width: float, weights: str | None, dropout: float = 0.0) -> nn.Module:
        ...

and a config that names it (``model.init_args.backbone: tiny``, or ``mylab.nets:tiny`` for a module
outside retinalab, imported on first use). The tasks' error lists and the ``weights fetch`` command read
the registry; nothing else needs to know the name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..utils.errors import ConfigError
from ..utils.registry import Registry, qualname

#: the stem/stage split of a timm ResNet, for the lesion-attention grader: (f_low modules, high modules)
RESNET_SPLIT = (("conv1", "bn1", "act1", "maxpool", "layer1"), ("layer2", "layer3", "layer4"))


@dataclass(frozen=True)
class Backbone:
    """A registered network.

    Attributes:
        name: the name configs use.
        build: ``build(num_classes, width, weights, **options)``; ``weights`` is ``None`` (from scratch) or
            what :mod:`retinalab.weights` resolves.
        pretrained: whether it takes pretrained ``weights``.
        options: the task options it takes beside those (e.g. ``dropout_in``, ``dropout``).
        grading_split: for a timm network usable as paper 001's grader, the module names of its low
            (``f_low``) and high stages; ``None`` where it cannot grade.
    """

    name: str
    build: Callable[..., nn.Module]
    pretrained: bool = False
    options: tuple[str, ...] = ()
    grading_split: tuple[tuple[str, ...], tuple[str, ...]] | None = None


BACKBONES: Registry[Backbone] = Registry("backbone")


def register_backbone(
    name: str,
    *,
    pretrained: bool = False,
    options: tuple[str, ...] = (),
    grading_split: tuple[tuple[str, ...], tuple[str, ...]] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder as backbone ``name`` (see :class:`Backbone` for the fields)."""

    def decorate(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        BACKBONES.add(name, Backbone(name, build, pretrained, tuple(options), grading_split), qualname(build))
        return build

    return decorate


def get_backbone(name: str, option: str = "model.backbone") -> Backbone:
    """The backbone registered as ``name`` (``module:name`` imports ``module`` first).

    Raises:
        ConfigError: an unknown name, listing the registered ones.
    """
    return BACKBONES.get(name, option)


def build_patch_model(
    name: str,
    num_classes: int = 2,
    width: float = 1.0,
    pretrained_path: str | None = None,
    weights: str | None = None,
    **options,
) -> nn.Module:
    """Patch classifier by registered name (``convnet``: paper 000's conv-large; ``resnet18/34/50``: timm).

    ``options`` the backbone does not take (:attr:`Backbone.options`) are left out, so a task passes its
    dropout whatever the backbone. ResNets train from scratch unless ``weights`` (``imagenet``,
    ``hf-hub:<id>`` or a local file; see :mod:`retinalab.weights`) or ``pretrained_path`` (a local file, as
    before) says otherwise.

    Raises:
        ConfigError: an unknown name (listing the registered ones), pretrained weights for a backbone that
            takes none, both ``weights`` and ``pretrained_path``, or a local file that does not exist.
        WeightsNotFoundError: hub weights neither cached nor reachable.
    """
    if weights and pretrained_path:
        raise ConfigError("set weights or pretrained_path (the older name of a local weights file), not both")
    weights = weights or pretrained_path
    spec = get_backbone(name)
    if weights and not spec.pretrained:
        takes = [n for n, b in BACKBONES.items() if b.pretrained]
        raise ConfigError(
            f"pretrained weights are only for the backbones that take them ({', '.join(takes)}), not {name!r}"
        )
    kept = {k: v for k, v in options.items() if k in spec.options}
    return spec.build(num_classes=num_classes, width=width, weights=weights, **kept)


def grading_backbones() -> list[str]:
    """The registered backbones paper 001's grader can use (those with a :attr:`Backbone.grading_split`)."""
    return [n for n, b in BACKBONES.items() if b.grading_split is not None]
