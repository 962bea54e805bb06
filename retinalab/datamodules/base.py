"""Pieces shared by the retinalab datamodules."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from ..datasets import FundusRecord, read_dataset
from ..utils.io import write_json_atomic
from .splits import split_hash

log = logging.getLogger(__name__)


class FundusDataModule(pl.LightningDataModule):
    """Base class: reading records and writing the split beside the run.

    Subclasses set ``self.dataset``, ``self.root``, ``self.reader_args``, ``self.on_error`` and
    ``self.split_file`` in their ``__init__``. Like TorchGeo's datamodules they do not call
    ``save_hyperparameters`` (their arguments are saved by LightningCLI's config instead, and
    duplicated keys with the module's hparams make loggers fail).
    """

    dataset: str
    root: str
    reader_args: dict[str, Any]
    on_error: str
    split_file: str | None

    def read_records(self) -> list[FundusRecord]:
        """All records of the configured dataset."""
        args = dict(self.reader_args or {})
        args.setdefault("on_error", self.on_error)
        return read_dataset(self.dataset, self.root, **args)

    def split_path(self) -> Path | None:
        """Where the split JSON goes: ``split_file``, else the trainer's log dir, else nowhere."""
        if self.split_file:
            return Path(self.split_file)
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return None
        base = trainer.log_dir or trainer.default_root_dir
        return Path(base) / "split.json"

    def write_split(self, parts: dict[str, list[str]], extra: dict[str, Any]) -> str:
        """Write ``{"hash", parts..., extra...}`` as JSON (global rank 0 only). Returns the hash."""
        h = split_hash(parts)
        self.split_hash = h
        # every rank must ask: Trainer.log_dir is a collective (it broadcasts rank 0's path)
        path = self.split_path()
        trainer = getattr(self, "trainer", None)
        if trainer is not None and not trainer.is_global_zero:
            return h
        if path is not None:
            write_json_atomic(path, {"hash": h, **extra, **parts})
            log.info("split written to %s", path)
        if trainer is not None and "counts" in extra:
            # the dataset report: what this run trains and is tested on, in the run's config (W&B, CSV, ...)
            report = {"data/split_hash": h, "data/dataset": str(extra.get("dataset", ""))}
            for part, counts in extra["counts"].items():
                report |= {f"data/{part}/{k}": v for k, v in counts.items()}
            for lg in trainer.loggers:
                lg.log_hyperparams(report)
        return h

    def already_predicted(self) -> set[str]:
        """Image ids that the run's resumable prediction writers already hold (their ``done`` sets).

        ``retinalab predict`` leaves these out of its dataset, so a resumed prediction over a large
        folder neither decodes nor scores an image twice.
        """
        from pytorch_lightning.callbacks import BasePredictionWriter

        trainer = getattr(self, "trainer", None)
        done: set[str] = set()
        for cb in getattr(trainer, "callbacks", None) or []:
            if isinstance(cb, BasePredictionWriter):
                done |= set(getattr(cb, "done", None) or ())
        if done:
            log.info("predict: %d image(s) already written; leaving them out", len(done))
        return done


def describe_counts(summary: dict[str, dict[str, int]]) -> str:
    """A split's counts (``PatchDataModule.summary()``) as one readable line: per part, its photographs
    (how many with lesions) and patches (how many diseased)."""
    names = {"labeled": "labelled", "unlabeled": "unlabelled"}
    return "; ".join(
        f"{names.get(part, part)} {c['images']} photographs ({c['images_diseased']} with lesions), "
        f"{c['patches']} patches ({c['patches_diseased']} diseased)"
        for part, c in summary.items()
    )
