"""What a checkpoint needs beyond Lightning's own for a resumed run to equal the uninterrupted one.

Lightning saves the weights, optimisers, schedulers and loop counters, but not the random state, and
writes its end-of-epoch checkpoints before the epoch's learning-rate schedulers step. ``last.ckpt``
(:class:`retinalab.lightning.LatestCheckpoint`) therefore also holds :func:`collect`'s state, and the
resumed run calls :func:`restore` as its first epoch starts:

* the global random states (torch, CUDA, numpy, Python) as they are after the epoch, which decide
  the next epoch's shuffle, the loader workers' seeds, dropout and the GAN's noise;
* the albumentations pipelines' streams (:mod:`retinalab.datamodules.transforms`) of the training
  loaders, which a rebuilt loader would otherwise start from their first draw;
* the monitored values of the epoch-interval schedulers, so that the step Lightning takes after the
  checkpoint is taken again on resume (``ReduceLROnPlateau`` steps on ``val/loss``).

It also names the run that wrote it (:func:`run_of`), so that a fit resumed from it with the same
config logs on into that run (:func:`continue_run`): its folder, where the monitored checkpoint keeps
its best score, and its W&B run.

What stays different after a resume, and why: with ``num_workers > 0`` the augmentations are drawn in
the (persistent) worker processes, whose streams die with them, so only the sample order is the same;
under DDP the saved random state is rank 0's (every rank resumes with it; the distributed sampler's
order depends on the seed and epoch only).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from ..datamodules.transforms import as_tuple, loader_transforms, set_stream_state, stream_state


def _training_transforms(trainer: pl.Trainer) -> list[Any]:
    try:
        loaders = trainer.train_dataloader
    except (AttributeError, RuntimeError):
        return []
    return loader_transforms(loaders) if loaders is not None else []


def collect(trainer: pl.Trainer) -> dict[str, Any]:
    """The random states and scheduler metrics, as tensors, ints and tuples (``weights_only``-readable)."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            **np_state,
            "state": {
                "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                "pos": int(np_state["state"]["pos"]),
            },
        },
        "python": random.getstate(),
        "transforms": [stream_state(tf) for tf in _training_transforms(trainer)],
        # an end-of-epoch checkpoint: the epoch's training and validation are done, its scheduler steps are not
        "epoch_end": trainer.fit_loop.epoch_progress.current.processed
        > trainer.fit_loop.epoch_progress.current.completed,
        "epoch": trainer.current_epoch,
        "monitored": {},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    for cfg in trainer.lr_scheduler_configs:
        value = trainer.callback_metrics.get(cfg.monitor) if cfg.monitor else None
        if value is not None:
            state["monitored"][cfg.monitor] = float(value)
    return state


def applies(state: dict[str, Any], trainer: pl.Trainer) -> bool:
    """Whether ``state`` was saved at the end of the epoch before the one ``trainer`` starts (a
    mid-epoch checkpoint, e.g. SLURM's ``hpc_ckpt``, resumes inside its epoch: Lightning cannot
    replay the rest of that epoch's batches, so its random state is of no use)."""
    return bool(state.get("epoch_end")) and state.get("epoch") == trainer.current_epoch - 1


def restore(state: dict[str, Any], trainer: pl.Trainer) -> list[str]:
    """Put back :func:`collect`'s state at the start of the resumed run's first epoch (its
    ``on_train_epoch_start``, when its loaders exist), and draw that epoch's batches again from it;
    returns what could not be restored (empty when everything was)."""
    missed: list[str] = []
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            missed.append(f"CUDA random state ({len(state['cuda'])} devices saved, {torch.cuda.device_count()} here)")
    np_state = state["numpy"]
    np.random.set_state(
        {
            **np_state,
            "state": {"key": np_state["state"]["key"].numpy().astype(np.uint32), "pos": np_state["state"]["pos"]},
        }
    )
    random.setstate(as_tuple(state["python"]))
    transforms = _training_transforms(trainer)
    if len(transforms) == len(state["transforms"]):
        for tf, s in zip(transforms, state["transforms"], strict=True):
            set_stream_state(tf, s)
    else:
        missed.append(
            f"augmentation streams ({len(state['transforms'])} pipelines saved, {len(transforms)} in this run's "
            "loaders)"
        )
    missed += _replay_epoch_schedulers(trainer, state.get("monitored", {}))
    # Lightning (2.6) made the resumed epoch's loader iterator, and prefetched its first batch, before
    # any epoch hook; the uninterrupted run makes it after them. Make it again, from the state above.
    fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
    if fetcher is not None:
        iter(fetcher)
    return missed


def _replay_epoch_schedulers(trainer: pl.Trainer, monitored: dict[str, float]) -> list[str]:
    """Take the epoch-interval scheduler steps Lightning takes after its end-of-epoch checkpoint (its
    ``_update_learning_rates``: every ``frequency`` epochs, plateau schedulers on their monitored value).
    Manual optimisation steps its schedulers itself, before the checkpoint."""
    missed = []
    epoch = trainer.current_epoch - 1  # the epoch the checkpoint ended; the resumed run is at the next one
    if trainer.lightning_module.automatic_optimization is False:
        return missed
    for cfg in trainer.lr_scheduler_configs:
        if cfg.interval != "epoch" or (epoch + 1) % cfg.frequency:
            continue
        if cfg.reduce_on_plateau:
            if cfg.monitor not in monitored:
                missed.append(
                    f"the {type(cfg.scheduler).__name__} step of epoch {epoch} ({cfg.monitor!r} was not saved)"
                )
                continue
            trainer.lightning_module.lr_scheduler_step(cfg.scheduler, monitored[cfg.monitor])
        else:
            trainer.lightning_module.lr_scheduler_step(cfg.scheduler, None)
    return missed


def find_last(trainer: pl.Trainer) -> str | None:
    """What ``--ckpt_path last`` resumes from: the newest (by modification time) of

    * every checkpoint callback's ``last*.ckpt`` (``last.ckpt``, ``last-sigterm.ckpt``) in its folder,
    * for a callback without a ``dirpath``, the same in the runs of this config before this one: each
      run gets a folder of its own (``<save_dir>/logs/version_<k>/checkpoints``), where Lightning's own
      ``last`` would look only in the new, empty one,
    * Lightning's SLURM checkpoint ``<default_root_dir>/hpc_ckpt_<n>.ckpt``;

    ``None`` when there is none (the run then starts from scratch, as Lightning's ``last`` does).
    """
    from pytorch_lightning.callbacks import ModelCheckpoint

    found: set[str] = set()
    for cb in trainer.checkpoint_callbacks:
        if not isinstance(cb, ModelCheckpoint):
            continue
        found |= cb._find_last_checkpoints(trainer)
        if cb.dirpath is None and trainer.loggers:  # not yet resolved: this run's <version>/checkpoints
            folder = Path(cb._ModelCheckpoint__resolve_ckpt_dir(trainer))
            found |= {
                str(p)
                for p in folder.parent.parent.glob(f"*/{folder.name}/{cb.CHECKPOINT_NAME_LAST}*{cb.FILE_EXTENSION}")
            }
    hpc = trainer._checkpoint_connector._hpc_resume_path  # Lightning's own lookup of hpc_ckpt_<max n>.ckpt
    if hpc:
        found.add(str(hpc))
    files = [Path(p) for p in found if Path(p).is_file()]
    return str(max(files, key=lambda p: p.stat().st_mtime)) if files else None


def run_record(logger: Any) -> dict[str, Any] | None:
    """The run ``logger`` logs into: ``{"dir": its version_<k> folder, "wandb_id": its W&B run id}``
    (the id is ``None`` until the run has started); ``None`` unless it is
    :class:`retinalab.lightning.loggers.WandbLogger`."""
    from .loggers import WandbLogger

    if not isinstance(logger, WandbLogger) or logger.save_dir is None:
        return None
    experiment = logger._experiment  # started on rank 0, which writes checkpoints and state; None elsewhere
    return {
        "dir": str(Path(logger.save_dir).resolve()),
        "wandb_id": experiment.id if experiment is not None else logger._id,
    }


def run_of(trainer: pl.Trainer) -> dict[str, Any] | None:
    """The run this fit logs into (:func:`run_record` of its first logger), as ``last.ckpt`` keeps it."""
    return run_record(trainer.loggers[0]) if trainer.loggers else None


def continue_run(trainer: pl.Trainer, checkpoint: dict[str, Any]) -> str | None:
    """Before ``trainer.fit(ckpt_path=...)``: point its logger at the run that wrote ``checkpoint``
    (see :meth:`retinalab.lightning.loggers.WandbLogger.continue_run` for when it does), so that the resumed fit
    writes into that run's folder, where Lightning reloads the monitored checkpoint's best score only
    (it compares the folder), and goes on with its W&B run. Returns the run folder, or ``None`` when
    the fit starts a run of its own."""
    from .loggers import WandbLogger

    lg = trainer.loggers[0] if trainer.loggers else None
    states = (checkpoint.get("callbacks") or {}).values()
    run = next((s["run"] for s in states if isinstance(s, dict) and isinstance(s.get("run"), dict)), None)
    if not isinstance(lg, WandbLogger) or run is None:
        return None
    # the step W&B logs as trainer/global_step: batches with an optimiser step (global_step counts every optimiser's)
    step = (
        checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {}).get("_batches_that_stepped", 0)
    )
    return run["dir"] if lg.continue_run(run["dir"], run.get("wandb_id"), step) else None
