"""Prediction writers: ``retinalab predict``'s scores, heatmaps and lesion maps, written as they are predicted."""

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
from pytorch_lightning.callbacks import BasePredictionWriter

from ..utils.io import save_png_atomic
from ..viz import localisation_auroc, patch_heatmap, side_by_side

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
        from ..viz import lesion_overlay

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
