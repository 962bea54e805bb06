"""``retinalab study``: methods x labelled-image counts x seeds."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from ..utils.errors import ArgumentParser, ConfigError

DESCRIPTION = "methods x labelled-image counts x seeds: retinalab study --config conf/studies/<name>.yaml"


def main(argv: Sequence[str]) -> int:
    """``retinalab study``: see :mod:`retinalab.experiments.study`. Exit 0 when every cell ran, 1 when some failed."""
    from ..experiments.study import (
        Study,
        collect,
        log_summary_to_wandb,
        logs_to_wandb,
        run_study,
        run_study_parallel,
    )

    p = ArgumentParser(prog="retinalab study", description=DESCRIPTION)
    p.add_argument("--config", required=True, help="study config (conf/studies/*.yaml)")
    p.add_argument(
        "--cell", type=int, default=None, help="run only cell I (0-based; for SLURM arrays: $SLURM_ARRAY_TASK_ID)"
    )
    p.add_argument("--list", action="store_true", help="print the cells and exit")
    p.add_argument(
        "--collect", action="store_true", help="only aggregate finished cells into results.csv / results.md / plots"
    )
    p.add_argument("--rerun-failed", action="store_true", help="run failed cells again (they are skipped by default)")
    p.add_argument(
        "--write-sweep", metavar="PATH", default=None, help="write a W&B sweep file whose runs are the cells, and exit"
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=None,
        metavar="N",
        help="run N cells at a time per visible GPU (on the CPU: N in all) as separate processes, each with "
        "its share of the CPU threads; default: one at a time in this process",
    )
    p.add_argument(
        "--devices",
        default=None,
        help="with --parallel: cpu, cuda, auto (default: every visible GPU, else the CPU) or GPU indices such as 0,1",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=os.environ.get("RETINALAB_DEVICE") or None,
        help="run the cell(s) on one CPU or one GPU (set by --parallel for its processes)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for this process (default: $RETINALAB_THREADS, else torch's)",
    )
    p.add_argument("--no-collect", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(list(argv))
    study = Study.load(a.config)
    if a.write_sweep:
        from ..experiments.study import write_sweep

        print(f"wrote {write_sweep(study, a.config, a.write_sweep)}")
        return 0
    if a.list:
        for i, cell in enumerate(study.cells()):
            print(f"{i}\t{cell.name}")
        return 0
    if a.parallel is not None and a.cell is not None:
        raise ConfigError("--parallel runs the unfinished cells; --cell runs one: use one of them")
    if not a.collect:
        from ..experiments.launch import limit_threads

        threads = limit_threads(a.threads)
        if a.parallel is not None:
            stats = run_study_parallel(study, a.parallel, a.devices, a.rerun_failed)
        else:
            stats = run_study(
                study, a.cell, a.rerun_failed, collect_after=not a.no_collect, device=a.device, threads=threads
            )
        print(
            f"[study {study.name}] {stats['done']} cell(s) run, {stats['failed']} failed, {stats['skipped']} already "
            "done or failed" + (f", {stats['busy']} run by another process" if stats.get("busy") else "")
        )
        if a.no_collect:
            return 1 if stats["failed"] else 0
    res = collect(study)
    print(
        f"[study {study.name}] {len(res['rows'])}/{len(study.cells())} cells finished -> {study.out_dir / 'results.md'}"
    )
    if (
        a.cell is None and logs_to_wandb(study) and res["rows"]
    ):  # the whole study (or --collect): its table and curves in W&B
        run_dir = log_summary_to_wandb(study)
        print(f"[study {study.name}] W&B summary run (results table, curves against the labelled count): {run_dir}")
    return 1 if res["failed"] else 0
