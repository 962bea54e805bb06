"""Lightning callbacks of retinalab."""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter, ModelCheckpoint

from .utils.io import save_png_atomic
from .viz import localisation_auroc, patch_heatmap, side_by_side

log = logging.getLogger(__name__)

SCORE_COLUMNS = ["image", "score", "predicted_label", "threshold", "max_patch_prob", "localisation_auroc", "overlay"]


def _safe_name(image_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "__", image_id).strip("_") or "image"


def _column(path: Path, name: str) -> set[str]:
    """The values of one column of a CSV written by a previous run (empty if there is none)."""
    if not path.is_file():
        return set()
    with open(path, newline="") as f:
        return {row[name] for row in csv.DictReader(f) if row.get(name)}


class PatchPredictionWriter(BasePredictionWriter):
    """Writes ``retinalab predict`` results of the patch methods as they arrive.

    ``<output_dir>/scores.csv``: one row per image (``image``, ``score`` = sum of patch sigmoids,
    ``predicted_label`` = score >= the threshold chosen on validation (empty when the model has
    none), ``threshold``, ``max_patch_prob``, ``localisation_auroc`` = pixel AUROC of the blurred
    heatmap against the union lesion mask where the image has one, ``overlay``);
    ``<output_dir>/overlays/<image>.png``: the heatmap over the image; ``skipped.csv``: files that
    could not be read; ``summary.json`` at the end. Rows are appended and flushed one by one, and a
    rerun skips images already in ``scores.csv``, so an interrupted prediction resumes.

    Args:
        output_dir: where to write (default ``<log_dir>/predictions``).
        overlays: write the overlay PNGs.
        blur_sigma: Gaussian blur std in overlay pixels (default: half a patch).
        alpha: opacity of the heatmap in the overlay.
    """

    def __init__(
        self, output_dir: str | None = None, overlays: bool = True, blur_sigma: float | None = None, alpha: float = 0.45
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir, self.overlays, self.blur_sigma, self.alpha = output_dir, overlays, blur_sigma, alpha
        self.dir: Path | None = None
        self.done: set[str] = set()
        self.skipped_ids: set[str] = set()
        self.started = time.perf_counter()
        self.loc: list[float] = []
        self.n_written = self.n_skipped = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        base = (
            Path(self.output_dir)
            if self.output_dir
            else Path(trainer.log_dir or trainer.default_root_dir) / "predictions"
        )
        self.dir = base
        base.mkdir(parents=True, exist_ok=True)
        suffix = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        self.scores_path = base / f"scores{suffix}.csv"
        self.skipped_path = base / f"skipped{suffix}.csv"
        self.done = _column(self.scores_path, "image")
        self.skipped_ids = _column(self.skipped_path, "image")  # tried again on a rerun, listed once
        if self.done:
            log.info("resuming: %d image(s) already in %s", len(self.done), self.scores_path)
        self.loc, self.n_written, self.n_skipped = [], 0, 0
        self.started = time.perf_counter()

    def _append(self, path: Path, columns: list[str], row: dict[str, Any]) -> None:
        new = not path.is_file() or path.stat().st_size == 0
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            if new:
                w.writeheader()
            w.writerow(row)
            f.flush()

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Any,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        assert self.dir is not None
        image_id = prediction["image_id"]
        if "error" in prediction:
            log.warning("skipped %s: %s", image_id, prediction["error"])
            if image_id not in self.skipped_ids:
                self._append(self.skipped_path, ["image", "error"], {"image": image_id, "error": prediction["error"]})
                self.skipped_ids.add(image_id)
            self.n_skipped += 1
            return
        if image_id in self.done:
            return
        probs = prediction["probs"].numpy()
        thr = float(getattr(pl_module, "image_threshold", float("nan")))
        score = prediction["score"]
        loc = float("nan")
        overlay_name = ""
        thumb = np.asarray(batch["thumb"].cpu() if hasattr(batch["thumb"], "cpu") else batch["thumb"])
        grid = trainer.datamodule.grid
        heat = patch_heatmap(probs, grid, thumb.shape[0], self.blur_sigma)
        mask = batch.get("mask")
        if mask is not None:
            loc = localisation_auroc(heat, np.asarray(mask.cpu() if hasattr(mask, "cpu") else mask))
            if not math.isnan(loc):
                self.loc.append(loc)
        if self.overlays:
            overlay_name = f"overlays/{_safe_name(image_id)}.png"
            save_png_atomic(side_by_side(thumb, heat, self.alpha), self.dir / overlay_name)
        row = {
            "image": image_id,
            "score": f"{score:.6f}",
            "predicted_label": "" if math.isnan(thr) else int(score >= thr),
            "threshold": "" if math.isnan(thr) else f"{thr:.6f}",
            "max_patch_prob": f"{float(probs.max()):.6f}",
            "localisation_auroc": "" if math.isnan(loc) else f"{loc:.6f}",
            "overlay": overlay_name,
        }
        self._append(self.scores_path, SCORE_COLUMNS, row)
        self.done.add(image_id)
        self.n_written += 1

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.dir is None:
            return
        summary = {
            "images_written": self.n_written,
            "images_in_scores_csv": len(self.done),
            "skipped": self.n_skipped,
            "mean_localisation_auroc": float(np.mean(self.loc)) if self.loc else None,
            "images_with_localisation_auroc": len(self.loc),
            "seconds": round(time.perf_counter() - self.started, 3),
        }
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=1))
        msg = (
            f"predictions: {self.n_written} new image(s) scored, {self.n_skipped} skipped in {summary['seconds']:.1f} "
            "s "
            f"-> {self.scores_path}"
        )
        if self.loc:
            auroc = summary["mean_localisation_auroc"]
            msg += f"; mean localisation AUROC {auroc:.3f} over {len(self.loc)} annotated image(s)"
        print(msg)


class LesionMapWriter(BasePredictionWriter):
    """Writes ``retinalab predict`` results of paper 001's collaborative model.

    Per image: ``maps/<image>.png`` = the photograph | G's lesion masks | the lesion attention maps
    (one colour per lesion: MA green, HE red, EX yellow, SE blue); with ``save_masks``,
    ``masks/<image>_<lesion>.png`` = the probability map as 8-bit grey. One row per image in
    ``predictions.csv`` (predicted grade, grade probabilities, p(referable), each lesion's largest
    mask probability, the picture), appended as images arrive; a rerun skips images already there.

    Args:
        output_dir: where to write (default ``<log_dir>/predictions``).
        save_masks: also write the per-lesion probability maps.
        alpha: opacity of the maps at probability 1.
    """

    def __init__(self, output_dir: str | None = None, save_masks: bool = True, alpha: float = 0.6) -> None:
        super().__init__(write_interval="batch")
        self.output_dir, self.save_masks, self.alpha = output_dir, save_masks, alpha
        self.dir: Path | None = None
        self.done: set[str] = set()
        self.n_written = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        self.dir = (
            Path(self.output_dir)
            if self.output_dir
            else Path(trainer.log_dir or trainer.default_root_dir) / "predictions"
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        suffix = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        self.csv_path = self.dir / f"predictions{suffix}.csv"
        self.done = _column(self.csv_path, "image")
        self.n_written = 0

    def write_on_batch_end(
        self,
        trainer,
        pl_module,
        prediction: dict[str, Any],
        batch_indices,
        batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        from .viz import lesion_overlay

        assert self.dir is not None
        lesions = list(pl_module.lesions)
        probs = prediction.get("grade_probs")
        grade_cols = [f"p_grade{k}" for k in range(probs.shape[1])] if probs is not None else []
        columns = [
            "image",
            "predicted_grade",
            *grade_cols,
            "p_referable",
            *[f"max_{les}" for les in lesions],
            "picture",
        ]
        for i, image_id in enumerate(prediction["image_id"]):
            if image_id in self.done:
                continue
            image = (prediction["image"][i].permute(1, 2, 0).clamp(0, 1) * 255).byte().numpy()
            masks = prediction["masks"][i].numpy()
            panels = [image, lesion_overlay(image, masks, lesions, self.alpha)]
            if prediction.get("alpha") is not None:
                panels.append(lesion_overlay(image, prediction["alpha"][i].numpy(), lesions, self.alpha))
            name = _safe_name(image_id)
            save_png_atomic(np.concatenate(panels, axis=1), self.dir / "maps" / f"{name}.png")
            if self.save_masks:
                for k, les in enumerate(lesions):
                    save_png_atomic(
                        np.clip(masks[k] * 255 + 0.5, 0, 255).astype(np.uint8), self.dir / "masks" / f"{name}_{les}.png"
                    )
            row: dict[str, Any] = {
                "image": image_id,
                "picture": f"maps/{name}.png",
                "p_referable": "",
                "predicted_grade": "",
            }
            if probs is not None:
                p = probs[i].numpy()
                row |= {"predicted_grade": int(p.argmax()), "p_referable": f"{float(p[2:].sum()):.6f}"}
                row |= {f"p_grade{k}": f"{float(v):.6f}" for k, v in enumerate(p)}
            row |= {f"max_{les}": f"{float(masks[k].max()):.4f}" for k, les in enumerate(lesions)}
            new = not self.csv_path.is_file() or self.csv_path.stat().st_size == 0
            with open(self.csv_path, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=columns)
                if new:
                    w.writeheader()
                w.writerow(row)
            self.done.add(image_id)
            self.n_written += 1

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.dir is not None:
            print(f"predictions: {self.n_written} new image(s) -> {self.csv_path} and {self.dir / 'maps'}")


class ChannelsLast(pl.Callback):
    """Store the model's 4-D weights channels-last (NHWC) for fitting, testing and prediction.

    Convolutions then run in NHWC kernels, which are faster with mixed precision on recent GPUs and
    on many CPUs (LeNet's convolutions run ~2x faster on the 2-core CPU box, see docs/benchmarks.md);
    inputs need no change where the convolutions use their weights as stored (PyTorch follows the
    weights' layout). conv-large, its generator, LeNet and paper 001's G and D need neither: they are
    channels-last already, inputs included (:mod:`retinalab.models.layout`); for conv-large the callback
    alone would not do, since its weight-normalised weights are recomputed in the plain layout at every
    call. Add it with
    ``--trainer.callbacks+=retinalab.callbacks.ChannelsLast``; combine with ``--trainer.precision
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
    with ``--trainer.callbacks+=retinalab.callbacks.Compile``; on a CPU the default ``inductor`` backend
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

    ``last.ckpt`` also holds what an exact resume needs (:mod:`retinalab.resume`): a run resumed from
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
        """Lightning's, plus the random states and scheduler metrics of :mod:`retinalab.resume`
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
