"""Batch-norm statistics recalibrated to the weights being evaluated (``RecalibrateBatchNorm``)."""

from __future__ import annotations

import logging

import pytorch_lightning as pl

log = logging.getLogger(__name__)


class RecalibrateBatchNorm(pl.Callback):
    """Batch-norm statistics that match the weights being evaluated ("precise BN", Wu & Johnson 2021).

    A network trained for few steps evaluates with running statistics that lag behind its weights
    (momentum 0.1 averages the last ~20 batches, taken while the weights were still moving): paper
    001's grader, trained to 100% accuracy in train mode on 16 images, was constant in eval mode. Before
    each validation (and before a test, when the datamodule has training images) this resets the
    running mean and variance of the task's batch-norm layers and re-estimates them as plain averages
    over up to ``batches`` training batches, the weights unchanged (no gradients, other layers in eval
    mode). The checkpoints saved after that validation hold the recalibrated statistics, so a
    test-only dataset (Messidor) is scored with them.

    The task chooses which networks (``recalibration_modules()``, default: all) and how a training
    batch passes through them (``recalibration_forward(batch)``, default: ``task(batch["image"])``).

    Args:
        batches: training batches to average over (default 50; ``None``: one pass over the loader).
        on_test: also before ``trainer.test`` (needs training images in the datamodule).
    """

    def __init__(self, batches: int | None = 50, on_test: bool = True) -> None:
        self.batches = batches
        self.on_test = on_test

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.recalibrate(trainer, pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.on_test:
            self.recalibrate(trainer, pl_module)

    def recalibrate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
        """Re-estimate the statistics; returns the number of batches used (0: no training data)."""
        import torch
        from torch.nn.modules.batchnorm import _BatchNorm

        roots = pl_module.recalibration_modules() if hasattr(pl_module, "recalibration_modules") else [pl_module]
        norms = [m for root in roots for m in root.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
        dm = trainer.datamodule
        try:
            loader = dm.train_dataloader() if dm is not None else None
        except (ValueError, RuntimeError) as e:  # e.g. a test-only split
            log.info("batch-norm recalibration skipped: no training data (%s)", e)
            return 0
        if not norms or loader is None:
            return 0
        was_training = pl_module.training
        momenta = [m.momentum for m in norms]
        pl_module.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
            m.train()
        used = 0
        try:
            with torch.no_grad():
                for item in loader:
                    if self.batches is not None and used >= self.batches:
                        break
                    batch = (
                        item[0] if isinstance(item, tuple) else item
                    )  # CombinedLoader yields (batch, idx, loader idx)
                    if batch is None:
                        continue
                    batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
                    if hasattr(pl_module, "recalibration_forward"):
                        pl_module.recalibration_forward(batch)
                    else:
                        pl_module(batch["image"])
                    used += 1
        finally:
            for m, mom in zip(norms, momenta, strict=True):
                m.momentum = mom
            pl_module.train(was_training)
        log.info("recalibrated %d batch-norm layers on %d training batches", len(norms), used)
        return used
