"""Loggers: a W&B logger that goes offline by itself without an API key, and a reader for offline runs."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger

from .wandb_offline import read_offline_run, wait_for_offline_run

log = logging.getLogger(__name__)

__all__ = [
    "WandbLogger",
    "has_wandb_credentials",
    "next_version_dir",
    "read_offline_run",
    "read_run_metrics",
    "wait_for_offline_run",
]


def read_run_metrics(run_dir: str | Path):
    """The logged metrics of one local run folder (``.../logs/version_<k>``) as a pandas DataFrame,
    one row per logging call: its ``metrics.csv`` (CSVLogger) or its W&B run's history, from the run's
    local ``.wandb`` file (``offline-run-*``; an online run writes the same file in ``run-*``).

    A run resumed in place (``retinalab fit --ckpt_path ...``) has one ``offline-run-*`` folder per
    piece, all with the run's id: they are joined in order, each piece's rows from the optimiser step
    where the next piece resumed (its ``run/resumed_at_step``) on dropped: those steps were trained
    again after the resume.

    Raises:
        FileNotFoundError: the folder holds neither.
    """
    import pandas as pd

    run_dir = Path(run_dir)
    if (run_dir / "metrics.csv").is_file():
        return pd.read_csv(run_dir / "metrics.csv")
    # [offline-]run-<YYYYMMDD_HHMMSS>-<id>: an online run keeps the same local record as an offline one
    runs = sorted(
        (p for pattern in ("offline-run-*", "run-*") for p in run_dir.glob(f"wandb/{pattern}") if p.is_dir()),
        key=run_piece_order,
    )
    if not runs:
        raise FileNotFoundError(f"{run_dir}: no metrics.csv and no wandb/offline-run-* or wandb/run-* folder")
    run_id = run_piece_id(runs[-1])
    pieces = [read_offline_run(r) for r in runs if run_piece_id(r) == run_id]
    rows: list[dict[str, Any]] = []
    for piece, after in zip(pieces, [*pieces[1:], None], strict=True):
        resumed_at = after["config"].get("run/resumed_at_step") if after else None
        rows += [r for r in piece["history"] if resumed_at is None or r.get("trainer/global_step", -1) < resumed_at]
    return pd.DataFrame(rows)


def run_piece_id(folder: Path) -> str:
    """The W&B run id of a local run folder ``[offline-]run-<YYYYMMDD_HHMMSS>-<id>[-<n>]``: the name of
    its ``run-<id>.wandb`` file. W&B appends ``-<n>`` to the folder when a piece of the same run starts
    within the same second as the one before (a quick resume), so the folder name alone can mislead."""
    files = sorted(Path(folder).glob("run-*.wandb"))
    if files:
        return files[0].stem.removeprefix("run-")
    _, _, rest = Path(folder).name.partition("run-")
    return rest.split("-")[1] if rest.count("-") >= 1 else rest


def run_piece_order(folder: Path) -> tuple[str, int]:
    """Start order of a run folder: its time stamp, then W&B's ``-<n>`` collision suffix (none is 0)."""
    _, _, rest = Path(folder).name.partition("run-")
    stamp, _, tail = rest.partition("-")
    suffix = tail.rsplit("-", 1)[-1] if tail.count("-") else ""
    return stamp, int(suffix) if suffix.isdigit() else 0


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


def next_version_dir(parent: Path) -> Path:
    """``parent/version_<k>`` with the smallest ``k`` above every existing one (as CSVLogger numbers runs)."""
    taken = [int(p.name.split("_", 1)[1]) for p in parent.glob("version_*") if p.name.split("_", 1)[1].isdigit()]
    return parent / f"version_{max(taken, default=-1) + 1}"


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that runs offline by itself when there is no W&B API key, and keeps
    each run's local files apart.

    Args:
        save_dir: runs of this config go under ``<save_dir>/<local_name>/version_<k>`` (a new ``k`` per
            run, as with ``CSVLogger``): W&B's own run folder (``wandb/``) and the files retinalab writes
            beside a run (``config.yaml``, ``split.json``, ``manifest.json``, ``predictions/``), so a
            second run of a config never overwrites the first one's.
        local_name: the folder between ``save_dir`` and ``version_<k>`` (default ``logs``); ``None``
            puts everything straight into ``save_dir``.
        offline: ``None`` (default) = online with credentials, offline without; ``True``/``False`` force it.
        resume_in_place: ``retinalab fit --ckpt_path <checkpoint>`` (``last`` included) of a checkpoint
            that a run of this config wrote continues that run: its ``version_<k>`` folder, where the
            monitored ``best.ckpt`` is tracked on from its best score, and its W&B run (same run id,
            so its charts go on; offline, ``wandb sync`` uploads the pieces in order). ``False``: a new
            folder and a new W&B run, as Lightning does. An ``id`` given here always wins.
        log_model: log the run's checkpoints as a W&B ``model`` artifact (Lightning's ``log_model``):
            ``True`` (default) at the end of a successful fit, every ``ModelCheckpoint``'s files (the
            best-of-metric ``best.ckpt`` with the aliases ``best`` and ``latest``, ``last.ckpt``), each
            with the monitored metric, its mode and the score that chose it in the artifact's metadata,
            so a colleague can pull the exact weights behind a figure (``model-<run id>:best``);
            ``"all"`` as they are written; ``False`` never. Offline nothing is uploaded: the line
            with the ``wandb sync`` command says so.
        **kwargs: everything Lightning's ``WandbLogger`` takes (``project``, ``group``, ``tags``, ``name``, ...).

    ``retinalab fit`` fills in a project, name, group and tags the config does not set
    (:func:`retinalab.lightning.cli.wandb_run_defaults`). An offline run prints where it is and the
    ``wandb sync`` command that uploads it later.
    """

    def __init__(
        self,
        *args: Any,
        save_dir: str | Path = ".",
        local_name: str | None = "logs",
        offline: bool | None = None,
        log_model: bool | str = True,
        resume_in_place: bool = True,
        **kwargs: Any,
    ) -> None:
        self.runs_dir = (
            Path(save_dir) / local_name if local_name else None
        )  # where this config's version_<k> folders are
        self.resume_in_place = resume_in_place
        if self.runs_dir is not None:
            save_dir = next_version_dir(self.runs_dir)
        if offline is None:
            offline = not has_wandb_credentials()
            if offline:
                log.info(
                    "no W&B API key found: logging offline (set WANDB_API_KEY or run `wandb login` for online runs)"
                )
        self._artifacts_skipped = bool(offline and log_model)  # said once, with the sync command
        if offline:
            log_model = False
        super().__init__(*args, save_dir=str(save_dir), offline=offline, log_model=log_model, **kwargs)
        if self._wandb_init.get("anonymous") is None:  # W&B warns that the setting has no effect, even for None
            self._wandb_init.pop("anonymous", None)
        self._offline_run = offline
        self._sync_hint_shown = False
        self._resumed_at_step: int | None = None

    # Lightning puts a ModelCheckpoint without a dirpath under <save_dir>/<name>/<version>/checkpoints;
    # the run's own folder already is <save_dir>, so its checkpoints go to <save_dir>/checkpoints (the
    # CSVLogger layout: logs/version_<k>/checkpoints). The W&B project and run id stay on the run.
    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def experiment(self) -> Any:
        if self._experiment is None and self._save_dir:
            Path(self._save_dir).mkdir(parents=True, exist_ok=True)  # else wandb falls back to a temporary folder
        started = self._experiment is None
        experiment = _LightningWandbLogger.experiment.fget(self)
        if started and self._experiment is not None and self._resumed_at_step is not None:
            # where this piece of the run takes over: the steps after it in the earlier piece were trained again
            self._experiment.config.update({"run/resumed_at_step": self._resumed_at_step}, allow_val_change=True)
        return experiment

    def continue_run(self, run_dir: str | Path, run_id: str | None, step: int) -> bool:
        """Log into the earlier run ``run_dir`` (one of this config's ``version_<k>`` folders) and W&B
        run ``run_id`` from optimiser step ``step`` on, instead of a new run; ``False`` (nothing changed)
        when that is not this config's run folder, ``resume_in_place`` is off, an ``id`` was given or
        the run has already started. The step goes into the run's config as ``run/resumed_at_step``."""
        run_dir = Path(run_dir)
        if (
            not self.resume_in_place
            or self.runs_dir is None
            or self._experiment is not None
            or self._wandb_init.get("id")
            or not run_dir.is_dir()
            or run_dir.resolve().parent != self.runs_dir.resolve()
        ):
            return False
        self._save_dir = self._wandb_init["dir"] = str(run_dir)
        if run_id:
            self._id = self._wandb_init["id"] = run_id  # Lightning's WandbLogger passes resume="allow"
        self._resumed_at_step = int(step)
        return True

    def finish(self, exit_code: int | None = None) -> None:
        """End the W&B run (the next fit in this process then starts its own), with ``exit_code``
        when it did not succeed; offline, return once its file is complete, so that it can be read
        back at once."""
        if self._experiment is None:
            return
        run_dir = Path(getattr(self._experiment, "dir", "") or ".").parent
        self._experiment.finish(exit_code=exit_code)
        if self._offline_run:
            wait_for_offline_run(run_dir)

    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._offline_run and self._experiment is not None and not self._sync_hint_shown:
            self._sync_hint_shown = True
            run_dir = Path(getattr(self._experiment, "dir", "") or ".").parent
            # a resumed run's earlier pieces: wandb sync uploads the folders of one run id in start order
            pieces = sorted(
                (
                    p
                    for p in run_dir.parent.glob("offline-run-*")
                    if p.is_dir() and run_piece_id(p) == self._experiment.id
                ),
                key=run_piece_order,
            ) or [run_dir]
            skipped = (
                " (its checkpoints are not uploaded as model artifacts offline: an online run logs them)"
                if self._artifacts_skipped
                else ""
            )
            print(
                f"W&B run saved offline in {run_dir}; upload it with: wandb sync {' '.join(map(str, pieces))}{skipped}"
            )
