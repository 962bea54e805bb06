"""Where a LightningModule's pictures go: W&B images with a ``WandbLogger``, else PNG sheets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl

from ..utils.io import save_png_atomic


def log_overlays(
    module: pl.LightningModule, key: str, overlays: list[tuple[str, np.ndarray]], png_name: str | None = None
) -> Path | None:
    """Log ``(caption, RGB image)`` pairs under ``key``. Call it on every rank: ``Trainer.log_dir`` is
    a collective under DDP (it broadcasts rank 0's path); only rank 0 writes.

    With a ``WandbLogger`` they become W&B images; otherwise they are stacked into one PNG at
    ``<log_dir>/overlays/<png_name>_epochNNNN.png`` (default ``png_name``: ``key`` with ``/`` -> ``_``),
    which is returned.
    """
    from pytorch_lightning.loggers import WandbLogger

    base = module.trainer.log_dir or module.trainer.default_root_dir
    if not overlays or not module.trainer.is_global_zero:
        return None
    wandb = [lg for lg in module.loggers if isinstance(lg, WandbLogger)]
    if wandb:
        wandb[0].log_image(key=key, images=[o for _, o in overlays], caption=[c for c, _ in overlays])
        return None
    if base is None:
        return None
    width = max(o.shape[1] for _, o in overlays)
    rows = [np.pad(o, ((0, 0), (0, width - o.shape[1]), (0, 0))) for _, o in overlays]
    return save_png_atomic(
        np.concatenate(rows, axis=0),
        Path(base) / "overlays" / f"{png_name or key.replace('/', '_')}_epoch{module.current_epoch:04d}.png",
    )
