"""What a run was: the resolved config, seed, split hash, package versions and git commit, written
as ``manifest.json`` beside the run (paper results are only worth what their provenance is)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from ..utils.io import write_json_atomic

PACKAGES = (
    "retinalab",
    "torch",
    "torchvision",
    "pytorch-lightning",
    "torchmetrics",
    "timm",
    "segmentation-models-pytorch",
    "albumentations",
    "numpy",
    "wandb",
    "jsonargparse",
)


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the git checkout holding ``path`` (default: retinalab's source), ``+dirty`` when
    it has uncommitted changes; ``None`` outside a checkout."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if dirty else sha


def manifest(
    config: dict[str, Any] | None = None, seed: int | None = None, split_hash: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "command": sys.argv,
        "seed": seed,
        "split_hash": split_hash,
        "git_commit": git_commit(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": platform.node(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        **extra,
        "config": config,
    }


def write_manifest(path: str | Path, payload: dict[str, Any]) -> Path:
    return write_json_atomic(path, payload, default=str)


class RunManifest(pl.Callback):
    """Writes ``<log_dir>/manifest.json`` when fitting or testing starts (rank 0). ``retinalab fit``
    adds it to every run; ``config`` is the resolved CLI configuration; ``ckpt_path`` the checkpoint
    a fit resumed from or a test loaded. A fit resumed in the run folder of an earlier one
    (:func:`retinalab.lightning.resume.continue_run`) keeps that fit's manifest, and those before it, under
    ``"earlier"`` (oldest first)."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config = config

    def _write(self, trainer: pl.Trainer, stage: str) -> None:
        base = trainer.log_dir or trainer.default_root_dir  # a collective under DDP: every rank asks
        if not trainer.is_global_zero or base is None:
            return
        dm = getattr(trainer, "datamodule", None)
        seed = (self.config or {}).get("seed_everything")
        payload = manifest(
            self.config,
            seed,
            getattr(dm, "split_hash", None),
            stage=stage,
            world_size=trainer.world_size,
            ckpt_path=str(trainer.ckpt_path) if trainer.ckpt_path else None,
        )
        path = Path(base) / "manifest.json"
        if stage == "fit" and trainer.ckpt_path and path.is_file():  # a resumed run's earlier pieces stay on record
            try:
                before = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                before = None
            if isinstance(before, dict) and before.get("stage") == "fit":
                payload["earlier"] = [*before.pop("earlier", []), before]
        write_manifest(path, payload)
        if stage == "fit":  # the resolved config and provenance in the run's config (W&B, hparams.yaml)
            for lg in trainer.loggers:
                lg.log_hyperparams({"config": self.config, "run/git_commit": payload["git_commit"], "run/seed": seed})

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, "fit")

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "test":
            self._write(trainer, "test")
