"""Lightning plumbing shared by every method: callbacks (prediction writers, performance, batch-norm
recalibration, the latest checkpoint), the exact resume, run manifests, the W&B logger and the
LightningCLI builder (:mod:`retinalab.lightning.cli`). Configs name the callbacks and the logger as
``retinalab.lightning.<Class>``.

The classes are imported on first use (PEP 562), so that ``import retinalab.lightning.cli`` does not
import Lightning: the command line sets up logging before Lightning installs its own handler.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: class -> the module of this package that defines it
_CLASSES = {
    "ChannelsLast": "performance",
    "Compile": "performance",
    "LatestCheckpoint": "checkpointing",
    "LesionMapWriter": "writers",
    "PatchPredictionWriter": "writers",
    "RecalibrateBatchNorm": "batchnorm",
    "WandbLogger": "loggers",
}

__all__ = sorted(_CLASSES)


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        return getattr(import_module(f".{_CLASSES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_CLASSES])
