"""Loggers: a W&B logger that goes offline by itself without an API key, and a reader for offline runs."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger

from .wandb_offline import read_offline_run

log = logging.getLogger(__name__)

__all__ = ["WandbLogger", "has_wandb_credentials", "read_offline_run"]


def has_wandb_credentials() -> bool:
    """True when W&B can log online: ``WANDB_API_KEY`` is set or ``~/.netrc`` has api.wandb.ai, and
    ``WANDB_MODE`` is not ``offline``/``disabled``."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return False
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc(os.environ.get("NETRC", str(Path.home() / ".netrc"))).hosts
    except (OSError, netrc.NetrcParseError):
        return False
    return any("wandb" in h for h in hosts)


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that runs offline by itself when there is no W&B API key.

    Args:
        offline: ``None`` (default) = online with credentials, offline without; ``True``/``False`` force it.
        log_model: upload checkpoints as artifacts (``"all"``, ``True`` = at the end, ``False``); ignored,
            with a warning, when offline (W&B cannot store artifacts offline).
        **kwargs: everything Lightning's ``WandbLogger`` takes (``project``, ``group``, ``tags``, ``name``, ...).

    An offline run prints where it is and the ``wandb sync`` command that uploads it later.
    """

    def __init__(self, *args: Any, offline: bool | None = None, log_model: bool | str = False, **kwargs: Any) -> None:
        if offline is None:
            offline = not has_wandb_credentials()
            if offline:
                log.info("no W&B API key found: logging offline (set WANDB_API_KEY or run `wandb login` for online runs)")
        if offline and log_model:
            log.warning("W&B is offline: checkpoints are not uploaded as artifacts (log_model=%r ignored)", log_model)
            log_model = False
        super().__init__(*args, offline=offline, log_model=log_model, **kwargs)
        self._offline_run = offline
        self._sync_hint_shown = False

    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._offline_run and self._experiment is not None and not self._sync_hint_shown:
            self._sync_hint_shown = True
            run_dir = Path(getattr(self._experiment, "dir", "") or ".").parent
            print(f"W&B run saved offline in {run_dir}; upload it with: wandb sync {run_dir}")
