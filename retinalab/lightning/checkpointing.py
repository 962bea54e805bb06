"""``last.ckpt`` after every epoch, holding what an exact resume needs (``LatestCheckpoint``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)


class LatestCheckpoint(ModelCheckpoint):
    """``last.ckpt`` after every epoch, whatever the monitored metric does.

    Lightning 2.6 writes a monitored checkpoint's ``save_last`` file only when a top-k checkpoint is
    saved in the same step, so while the metric does not improve ``last.ckpt`` stays at the last
    improvement, and ``--ckpt_path last`` (or a resumed job) loses every epoch since. This callback
    keeps one checkpoint of the latest state, ``<dirpath>/last.ckpt``, replaced at the end of every
    training epoch (after its validation when it has one; also in epochs without validation). The file is written by the
    trainer's checkpoint IO: retinalab's commands give it :class:`retinalab.checkpoints.AtomicCheckpointIO`
    (a temporary file beside it, renamed over it), so a kill during the write leaves the previous
    checkpoint readable. Put it after the monitored
    ``ModelCheckpoint`` in ``callbacks`` (``trainer.checkpoint_callback`` is the first one).

    ``last.ckpt`` also holds what an exact resume needs (:mod:`retinalab.lightning.resume`): a run resumed from
    it with ``--ckpt_path last`` ends as the uninterrupted run would have, and, with retinalab's
    ``WandbLogger``, logs on into the same run folder and W&B run.

    On SIGTERM (a cluster's preemption or time limit; Lightning stops after the batch under way) it
    writes the moment's state to ``<dirpath>/last-sigterm.ckpt``, which ``--ckpt_path last`` takes
    when it is the newest: the resumed run continues inside that epoch (not bit for bit: the rest of
    the epoch draws new batches). The next end-of-epoch ``last.ckpt`` removes it.

    Args:
        dirpath: the folder (default: Lightning's, ``<log dir>/checkpoints``); give the monitored
            checkpoint's when it sets one, so that ``--ckpt_path last`` finds both.
        every_n_epochs: how often (default every epoch).
    """

    def __init__(self, dirpath: str | None = None, every_n_epochs: int = 1) -> None:
        # saved at the end of every training epoch, also of epochs without validation
        # (check_val_every_n_epoch > 1); the epoch's validation, when it has one, has run by then
        super().__init__(
            dirpath=dirpath,
            filename=self.CHECKPOINT_NAME_LAST,
            monitor=None,
            save_top_k=1,
            save_last=False,
            every_n_epochs=every_n_epochs,
            enable_version_counter=False,
            save_on_train_epoch_end=True,
        )
        self._trainer: pl.Trainer | None = None
        self._resume_state: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        """Lightning's, plus the random states and scheduler metrics of :mod:`retinalab.lightning.resume`
        (in every checkpoint of a fit, this one's and the monitored one's)."""
        from .resume import collect, run_of

        state = super().state_dict()
        if self._trainer is not None and self._trainer.state.fn == "fit":
            state["resume"] = collect(self._trainer)
            state["run"] = run_of(self._trainer)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._resume_state = state_dict.get("resume")

    @property
    def sigterm_path(self) -> Path | None:
        return (
            Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}-sigterm{self.FILE_EXTENSION}" if self.dirpath else None
        )

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        if (
            isinstance(exception, SIGTERMException)
            and trainer.state.fn == "fit"
            and not trainer.sanity_checking
            and self.sigterm_path
        ):
            trainer.save_checkpoint(self.sigterm_path)  # every rank takes part; rank 0 writes
            log.warning(
                "SIGTERM: the state after %d optimiser steps is in %s; resume with --ckpt_path last",
                trainer.global_step,
                self.sigterm_path,
            )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        path = self.sigterm_path
        if (
            trainer.is_global_zero
            and path is not None
            and path.is_file()
            and self._last_global_step_saved == trainer.global_step
        ):
            path.unlink()  # last.ckpt is newer and is at an epoch's end

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the first epoch of a resumed fit: its loaders exist, nothing has drawn from the random state yet
        if self._resume_state is None:
            return
        from .resume import applies, restore

        state, self._resume_state = self._resume_state, None
        if not applies(state, trainer):
            log.warning(
                "resumed from a checkpoint saved inside epoch %s: the random state is not restored, so the run will "
                "differ "
                "from an uninterrupted one (end-of-epoch checkpoints such as last.ckpt restore it)",
                state.get("epoch"),
            )
            return
        missed = restore(state, trainer)
        if missed:
            log.warning(
                "resumed at epoch %d without: %s; the run will differ from an uninterrupted one",
                trainer.current_epoch,
                "; ".join(missed),
            )
