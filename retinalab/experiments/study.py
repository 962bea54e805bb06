"""``retinalab study``: methods x labelled-image counts x seeds, the shape of paper 000's Tables 1-2.

A study config (``conf/studies/*.yaml``)::

    name: idrid_label_efficiency
    out_dir: runs/studies/idrid_label_efficiency
    methods:                       # name -> a `retinalab fit` config
      convnet: conf/convnet/idrid.yaml
      ssl_gan: conf/ssl_gan/idrid.yaml
    labelled: [10, 20, 40, 80, 149]
    seeds: [0, 1, 2, 3, 4]
    selection: random              # how the labelled images are chosen: random, or egl (an EGL active learner)
    metrics: [test/image_auroc, test/patch_auroc]
    overrides: [--data.root=/data/IDRiD]          # for every cell
    method_overrides: {ssl_gan: [--trainer.strategy=ddp_find_unused_parameters_true]}
    wandb: {project: retinalab}    # optional: one W&B run per cell, grouped by study, tagged

Each cell runs ``fit`` with ``--data.num_labeled_images=<n> --data.seed=<seed> --seed_everything=<seed>``
(so every method sees the same split and the same labelled images at a given count and seed; the
labelled sets are nested across counts), then ``test`` on the best checkpoint (``test/...``; the last
weights when the config has no monitored checkpoint) and on the final weights (``test_last/...``: the
paper trains a fixed number of epochs and selects nothing). A finished cell leaves ``cell.json``, written atomically: a
rerun skips it, so a killed study resumes; the cell that was training when it was killed resumes from
its newest ``checkpoints/last*.ckpt`` (``LatestCheckpoint``: the end of its last epoch, or the moment
of a SIGTERM) or SLURM's ``hpc_ckpt`` (:func:`retinalab.lightning.resume.find_last`) instead of starting over,
in the same run folder. A failing cell writes ``failed.json`` and the study goes
on. ``results.csv``, ``results.md`` (mean +- std per method and count) and ``<metric>.png`` (metric
against labelled images, error bars) are rewritten after every cell. ``--cell i`` runs one cell (a
SLURM array task), ``--collect`` only aggregates.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from ..utils.errors import ConfigError
from ..utils.io import write_json_atomic
from ..utils.runs import RunBusyError
from .report import collect, log_summary_to_wandb, logs_to_wandb, summary_table  # noqa: F401 (the study's API)
from .spec import SELECTIONS, Cell, Study  # noqa: F401 (the study's API)

log = logging.getLogger(__name__)


def device_args(device: str | None) -> list[str]:
    """Trainer overrides for one process on one device (``--parallel``): ``cpu`` or ``cuda``
    (the one GPU ``CUDA_VISIBLE_DEVICES`` leaves visible); none for ``None``."""
    if device is None:
        return []
    accelerator = {"cpu": "cpu", "cuda": "gpu"}[device]
    return [
        f"--trainer.accelerator={accelerator}",
        "--trainer.devices=1",
        "--trainer.num_nodes=1",
        "--trainer.strategy=auto",
    ]


def run_cell(study: Study, cell: Cell, device: str | None = None, threads: int | None = None) -> dict[str, Any]:
    """Fit and test one cell in this process; returns the test metrics (written to ``cell.json``).

    ``device`` (``cpu``/``cuda``) pins the trainer to one device; ``threads`` caps the loader and
    cache workers (:func:`retinalab.experiments.launch.cap_workers`), as ``--parallel`` does for each cell.
    The cell's folder is locked meanwhile (:func:`retinalab.utils.runs.run_lock`): a second process on the
    same cell (another ``--cell I``, a study started twice) is refused before it writes anything.
    """
    from ..utils.runs import rank0_lock

    with rank0_lock(study.cell_dir(cell), f"retinalab study {study.name} (cell {cell.name})"):
        return _run_cell(study, cell, device, threads)


def _run_cell(study: Study, cell: Cell, device: str | None, threads: int | None) -> dict[str, Any]:
    from ..lightning.cli import cli, finish_wandb
    from .launch import cap_workers

    d = study.cell_dir(cell)
    args = study.args(cell) + device_args(device)
    started = time.time()
    c = cli(args, run=False)
    cap_workers(c.datamodule, threads)
    from pytorch_lightning.callbacks import ModelCheckpoint

    for cb in c.trainer.callbacks:
        if isinstance(cb, ModelCheckpoint):
            # a config's dirpath (runs/<name>/checkpoints) would be shared by every cell, and cells that
            # run at the same time (--parallel) would overwrite each other's best.ckpt
            cb.dirpath = str(d / "checkpoints")
    from ..lightning.resume import continue_run, find_last

    # the cell was killed while it trained: go on from its latest state (last*.ckpt in its checkpoint
    # folder, or SLURM's hpc_ckpt in the cell's folder, whichever is newest)
    resumed = find_last(c.trainer)
    if resumed is not None:
        from ..checkpoints import CheckpointError, check_checkpoint

        try:
            ckpt = check_checkpoint(resumed, c.model)
        except CheckpointError as e:
            raise CheckpointError(f"{e}; delete it to start this cell afresh") from None
        continue_run(c.trainer, ckpt)  # the same run folder and W&B run
        print(
            f"[study {study.name}] cell {cell.name}: resuming from {resumed} (after {ckpt.get('global_step')} "
            "optimiser steps)",
            flush=True,
        )
        del ckpt
    c.trainer.fit(c.model, c.datamodule, ckpt_path=resumed)
    ckpt = c.trainer.checkpoint_callback
    best = (
        ckpt.best_model_path if ckpt is not None and getattr(ckpt, "monitor", None) and ckpt.best_model_path else None
    )
    # the final weights (the paper trains a fixed number of epochs and selects nothing), then the best
    # checkpoint, which replaces them in memory
    last = c.trainer.test(c.model, c.datamodule, verbose=False)
    res = c.trainer.test(c.model, c.datamodule, ckpt_path=best, verbose=False) if best else last
    wandb_run = wandb_run_record(c.trainer)
    finish_wandb(
        c.trainer
    )  # one W&B run per cell (its model artifact logged as it closes): close it before the next cell starts one
    metrics: dict[str, float] = {}
    for part in res:
        metrics |= {k.split("/dataloader_idx")[0]: float(v) for k, v in part.items()}
    for part in last:  # test_last/...: the same figures for the final weights
        metrics |= {k.split("/dataloader_idx")[0].replace("test/", "test_last/", 1): float(v) for k, v in part.items()}
    import torch

    payload = {
        "method": cell.method,
        "labelled": cell.labelled,
        "seed": cell.seed,
        "checkpoint": best,
        "metrics": metrics,
        "resumed_from": resumed,
        "wandb_run": wandb_run,
        "split_hash": getattr(c.datamodule, "split_hash", None),
        "args": args,
        "started": started,
        "finished": time.time(),
        "seconds": round(time.time() - started, 2),
        "device": str(c.trainer.strategy.root_device),
        "torch_threads": torch.get_num_threads(),
    }
    write_json_atomic(d / "cell.json", payload)
    return payload


def wandb_run_record(trainer: Any) -> dict[str, Any] | None:
    """The W&B run a cell logged into (id, project, entity) and, when its logger logs checkpoints (an
    online run; ``log_model``), the name of its model artifact: what the study's summary run links."""
    from pytorch_lightning.loggers import WandbLogger

    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger) and lg._experiment is not None:
            exp = lg.experiment
            return {
                "id": exp.id,
                "project": exp.project,
                "entity": getattr(exp, "entity", None) or None,
                "artifact": f"model-{exp.id}" if lg._log_model else None,
            }
    return None


def _todo(study: Study, cells: list[Cell], rerun_failed: bool) -> tuple[list[Cell], int]:
    todo = [
        c
        for c in cells
        if not (study.cell_dir(c) / "cell.json").is_file()
        and (rerun_failed or not (study.cell_dir(c) / "failed.json").is_file())
    ]
    return todo, len(cells) - len(todo)


def _record_failure(study: Study, cell: Cell, e: BaseException) -> None:
    write_json_atomic(
        study.cell_dir(cell) / "failed.json",
        {"cell": cell.name, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-5000:]},
    )
    log.error("study %s: cell %s failed: %s", study.name, cell.name, e)
    print(f"[study {study.name}] cell {cell.name} FAILED: {type(e).__name__}: {e}", flush=True)


def run_study(
    study: Study,
    only: int | None = None,
    rerun_failed: bool = False,
    collect_after: bool = True,
    device: str | None = None,
    threads: int | None = None,
) -> dict[str, int]:
    """Run the cells not finished yet (or only cell ``only``) one after another in this process;
    returns counts of done/failed/skipped. See :func:`run_study_parallel` for several at a time."""
    cells = study.cells()
    if only is not None:
        if not 0 <= only < len(cells):
            raise ConfigError(f"--cell {only}: the study has cells 0..{len(cells) - 1}")
        cells = [cells[only]]
    todo, skipped = _todo(study, cells, rerun_failed)
    stats = {"done": 0, "failed": 0, "skipped": skipped}
    index = {c.name: i for i, c in enumerate(study.cells())}
    for cell in todo:
        d = study.cell_dir(cell)
        log.info("study %s: cell %d/%d %s", study.name, index[cell.name] + 1, len(study.cells()), cell.name)
        print(f"[study {study.name}] cell {index[cell.name] + 1}/{len(study.cells())}: {cell.name}", flush=True)
        try:
            run_cell(study, cell, device, threads)
            (d / "failed.json").unlink(missing_ok=True)
            stats["done"] += 1
        except RunBusyError as e:  # another process runs this cell: not a failure, and not ours to write into
            if only is not None:
                raise
            print(f"[study {study.name}] cell {cell.name} skipped: {e}", flush=True)
            stats["busy"] = stats.get("busy", 0) + 1
        except Exception as e:  # noqa: BLE001 - one failed cell must not stop the study
            _record_failure(study, cell, e)
            stats["failed"] += 1
        if only is None and collect_after:
            collect(study)
    return stats


def run_study_parallel(
    study: Study, parallel: int, devices: str | None = None, rerun_failed: bool = False
) -> dict[str, int]:
    """Run the unfinished cells as ``parallel`` concurrent ``retinalab study --cell I`` processes per
    visible GPU (or on the CPU), each with its share of the CPU threads (:mod:`retinalab.experiments.launch`).

    Every cell writes ``cell.json`` (or ``failed.json``) itself; this process rewrites ``results.csv``,
    ``results.md`` and the plots as each one ends and prints one progress line. A process that dies
    without either file (killed, out of memory) gets a ``failed.json`` pointing at its ``cell.log``.
    """
    from .launch import Job, plan_slots, run_jobs

    if study.source is None:
        raise ValueError("run_study_parallel needs a study loaded from a file (Study.load)")
    slots = plan_slots(parallel, devices)
    cells = study.cells()
    todo, skipped = _todo(study, cells, rerun_failed)
    stats = {"done": 0, "failed": 0, "skipped": skipped}
    by_name = {c.name: (i, c) for i, c in enumerate(cells)}
    jobs = []
    for cell in todo:
        i = by_name[cell.name][0]
        # the slot's device and thread share reach the child as RETINALAB_DEVICE / RETINALAB_THREADS
        argv = [
            sys.executable,
            "-m",
            "retinalab",
            "study",
            "--config",
            str(study.source),
            "--cell",
            str(i),
            "--no-collect",
            *(["--rerun-failed"] if rerun_failed else []),
        ]
        jobs.append(Job(cell.name, argv, study.cell_dir(cell) / "cell.log"))
    print(
        f"[study {study.name}] {len(todo)} cell(s) to run ({skipped} already done or failed) as {len(slots)} processes "
        f"({', '.join(sorted({s.label for s in slots}))}, {slots[0].threads} CPU thread(s) each)"
        if todo
        else f"[study {study.name}] nothing to run ({skipped} cells already done or failed)",
        flush=True,
    )

    def done(job: Job, rc: int, seconds: float) -> None:
        cell = by_name[job.name][1]
        d = study.cell_dir(cell)
        if (d / "cell.json").is_file():
            (d / "failed.json").unlink(missing_ok=True)
            stats["done"] += 1
        elif rc == 2 and _held_elsewhere(d):  # refused: another process runs this cell
            stats["busy"] = stats.get("busy", 0) + 1
        else:
            if not (d / "failed.json").is_file() or rc < 0:
                tail = job.log.read_text(errors="replace")[-3000:] if job.log.is_file() else ""
                write_json_atomic(
                    d / "failed.json",
                    {
                        "cell": cell.name,
                        "error": f"the cell's process ended with exit code {rc} without a result; see {job.log}",
                        "traceback": tail,
                    },
                )
            stats["failed"] += 1
        collect(study)

    run_jobs(jobs, slots, done, prefix=f"[study {study.name}] ")
    return stats


def _held_elsewhere(folder: Path) -> bool:
    """Whether another process holds ``folder``'s run lock."""
    from ..utils.runs import run_lock

    try:
        with run_lock(folder, "retinalab study (checking a cell)"):
            return False
    except RunBusyError:
        return True


def write_sweep(study: Study, config_path: str | Path, path: str | Path, metric: str | None = None) -> Path:
    """A W&B sweep file whose runs are the study's cells (``retinalab study --config X --cell=<i>``), so
    ``wandb sweep`` + ``wandb agent`` on a cluster (or ``retinalab sweep`` here) can run a study."""
    n = len(study.cells())
    metric = metric or (study.metrics[0] if study.metrics else "test/image_auroc")
    lines = [
        f"# Study {study.name} as a W&B sweep: one run per cell (method x labelled x seed), {n} in all.",
        f"#   wandb sweep {path}   then   wandb agent <id>   (or locally: retinalab sweep {path})",
        f"# Then: retinalab study --config {config_path} --collect",
        "method: grid",
        "metric:",
        f"  name: {metric}",
        "  goal: maximize",
        "parameters:",
        "  cell:",
        f"    values: [{', '.join(str(i) for i in range(n))}]",
        "command:",
        "  - ${env}",
        "  - ${interpreter}",
        "  - -m",
        "  - retinalab",
        "  - study",
        "  - --config",
        f"  - {config_path}",
        "  - ${args}",
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
