"""Callbacks that make training and inference faster without changing what is computed: channels-last
weights and ``torch.compile``."""

from __future__ import annotations

import logging

import pytorch_lightning as pl

log = logging.getLogger(__name__)


class ChannelsLast(pl.Callback):
    """Store the model's 4-D weights channels-last (NHWC) for fitting, testing and prediction.

    Convolutions then run in NHWC kernels, which are faster with mixed precision on recent GPUs and on many CPUs
    (docs/benchmarks.md, "Channels-last"); inputs need no change where the convolutions use their weights as
    stored (PyTorch follows the weights' layout). conv-large, its generator, LeNet and paper 001's G and D need
    neither: they are channels-last already, inputs included (:mod:`retinalab.models.layout`); for conv-large
    the callback alone would not do, since its weight-normalised weights are recomputed in the plain layout at
    every call. Add it with
    ``--trainer.callbacks+=retinalab.lightning.ChannelsLast``; combine with ``--trainer.precision
    bf16-mixed`` (or ``16-mixed`` on GPUs) for mixed precision.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        import torch

        pl_module.to(memory_format=torch.channels_last)


class Compile(pl.Callback):
    """Compile the model's networks with ``torch.compile`` for fitting, testing and prediction.

    Each child network of the LightningModule (or those named in ``modules``) is compiled in place
    with :meth:`torch.nn.Module.compile`, so parameter names, checkpoints and ``state_dict`` keys stay
    those of the uncompiled model (``torch.compile(model)`` would prefix every key with ``_orig_mod.``):
    a checkpoint trained compiled loads into an uncompiled model and back. The first steps are slow
    while the graphs compile (and again for each new input shape, e.g. a last smaller batch). Add it
    with ``--trainer.callbacks+=retinalab.lightning.Compile``; on a CPU the default ``inductor`` backend
    needs a C++ compiler.

    Args:
        backend: ``torch.compile`` backend (``inductor``; ``aot_eager`` to check a model compiles).
        mode: ``default``, ``reduce-overhead`` (CUDA graphs) or ``max-autotune``.
        dynamic: treat shapes as dynamic (``None``: PyTorch decides after a shape changes).
        modules: attribute names of the networks to compile (default: every child module with parameters).
    """

    def __init__(
        self,
        backend: str = "inductor",
        mode: str | None = None,
        dynamic: bool | None = None,
        modules: list[str] | None = None,
    ) -> None:
        self.backend, self.mode, self.dynamic, self.modules = backend, mode, dynamic, modules
        self.compiled: list[str] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        children = dict(pl_module.named_children())
        names = (
            self.modules
            if self.modules is not None
            else [n for n, m in children.items() if any(True for _ in m.parameters())]
        )
        unknown = [n for n in names if n not in children]
        if unknown:
            raise ValueError(f"Compile: {type(pl_module).__name__} has no network {unknown}; it has {sorted(children)}")
        for name in names:
            if name not in self.compiled:
                children[name].compile(backend=self.backend, mode=self.mode, dynamic=self.dynamic)
                self.compiled.append(name)
        log.info(
            "compiled %s with torch.compile(backend=%r, mode=%r)", ", ".join(self.compiled), self.backend, self.mode
        )
