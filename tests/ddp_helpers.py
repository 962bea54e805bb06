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
        torch.save({k: v.detach().cpu() for k, v in pl_module.state_dict().items()}, out / f"rank{trainer.global_rank}.pt")
