"""Importable helpers for the DDP subprocess tests (Lightning's ddp re-launches the command per rank)."""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
import torch


class SaveRankWeights(pl.Callback):
    """At the end of fit, every rank saves its model weights to ``$RETINALAB_TEST_WEIGHTS_DIR/rank<r>.pt``."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        out = Path(os.environ["RETINALAB_TEST_WEIGHTS_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        torch.save(
            {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}, out / f"rank{trainer.global_rank}.pt"
        )


class KillAtEpochStart(pl.Callback):
    """``kill -9`` of this very process as epoch ``$RETINALAB_TEST_KILL_EPOCH`` (0-based) starts, when
    everything of the epoch before (its validation and checkpoints) is done: a preemption at a known point."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == int(os.environ["RETINALAB_TEST_KILL_EPOCH"]):
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


class KillOnNthFit(pl.Callback):
    """``kill -9`` of this process when the ``$RETINALAB_TEST_KILL_FIT``-th fit of the process (1-based)
    starts training epoch ``$RETINALAB_TEST_KILL_FIT_EPOCH`` (default 0, its first): a study killed in
    the middle of one of its cells."""

    fits = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        KillOnNthFit.fits += 1

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if KillOnNthFit.fits == int(os.environ.get("RETINALAB_TEST_KILL_FIT", "0")) and trainer.current_epoch == int(
            os.environ.get("RETINALAB_TEST_KILL_FIT_EPOCH", "0")
        ):
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


class SigtermAtBatch(pl.Callback):
    """SIGTERM to this process after batch ``$RETINALAB_TEST_SIGTERM_BATCH`` (0-based) of epoch
    ``$RETINALAB_TEST_SIGTERM_EPOCH``: a cluster's preemption notice in the middle of an epoch."""

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:  # noqa: ANN001
        if (trainer.current_epoch, batch_idx) == (
            int(os.environ.get("RETINALAB_TEST_SIGTERM_EPOCH", "-1")),
            int(os.environ.get("RETINALAB_TEST_SIGTERM_BATCH", "-1")),
        ):
            import signal

            os.kill(os.getpid(), signal.SIGTERM)


class KillWhileWritingLast(pl.Callback):
    """``kill -9`` of this process halfway through writing ``last.ckpt`` at the end of epoch
    ``$RETINALAB_TEST_KILL_WRITE_EPOCH``: half the new checkpoint's bytes are on disk when it dies."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch != int(os.environ.get("RETINALAB_TEST_KILL_WRITE_EPOCH", "-1")):
            return
        import signal

        import retinalab.utils.io as ck

        real = ck._write_bytes

        def write(f, data) -> None:  # noqa: ANN001
            if Path(f.name).name.startswith(".last.ckpt."):
                real(f, data[: len(data) // 2])
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            real(f, data)

        ck._write_bytes = write
