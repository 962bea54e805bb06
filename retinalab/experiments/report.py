"""What a finished (or partly finished) study reports: ``results.csv`` / ``results.md`` and one plot per
metric (:func:`collect`), and one W&B summary run for the whole study (:func:`log_summary_to_wandb`)
with its tables, curves, plots and the model artifacts of its cells."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..utils.io import save_figure_atomic, write_csv_atomic, write_text_atomic

if TYPE_CHECKING:
    from .spec import Study

log = logging.getLogger(__name__)


def collect(study: Study) -> dict[str, Any]:
    """Gather finished cells into results.csv, results.md and one plot per metric."""
    rows, failed = [], []
    for cell in study.cells():
        d = study.cell_dir(cell)
        if (d / "cell.json").is_file():
            rows.append(json.loads((d / "cell.json").read_text()))
        elif (d / "failed.json").is_file():
            failed.append(json.loads((d / "failed.json").read_text()))
    study.out_dir.mkdir(parents=True, exist_ok=True)
    metrics = study.metrics or sorted({k for r in rows for k in r["metrics"] if not k.startswith("test_last/")})
    # each test metric also for the final weights, after the best-on-validation checkpoint's
    metrics = [*metrics, *(m.replace("test/", "test_last/", 1) for m in metrics if m.startswith("test/"))]
    write_csv_atomic(
        study.out_dir / "results.csv",
        ["method", "labelled", "seed", *metrics],
        [
            [
                r["method"],
                "all" if r["labelled"] is None else r["labelled"],
                r["seed"],
                *[r["metrics"].get(m, "") for m in metrics],
            ]
            for r in rows
        ],
    )
    md = [
        f"# Study {study.name}",
        "",
        f"{len(rows)} of {len(study.cells())} cells finished, {len(failed)} failed; mean +- std over seeds.",
        "",
    ]
    counts = study.labelled
    for m in metrics:
        md += [
            f"## {m}",
            "",
            "| method | " + " | ".join("all" if n is None else str(n) for n in counts) + " |",
            "|---|" + "---|" * len(counts),
        ]
        for method in study.methods:
            cells = []
            for n in counts:
                v = [
                    r["metrics"][m]
                    for r in rows
                    if r["method"] == method
                    and r["labelled"] == n
                    and m in r["metrics"]
                    and not math.isnan(r["metrics"][m])
                ]
                cells.append(f"{np.mean(v):.3f} +- {np.std(v):.3f} ({len(v)})" if v else "-")
            md.append(f"| {method} | " + " | ".join(cells) + " |")
        md.append("")
        _plot(study, rows, m)
    if failed:
        md += ["## Failed cells", ""] + [f"* {f['cell']}: {f['error']}" for f in failed] + [""]
    write_text_atomic(study.out_dir / "results.md", "\n".join(md))
    return {"rows": rows, "failed": failed}


def logs_to_wandb(study: Study) -> bool:
    """True when the study's cells log to W&B (:meth:`Study.uses_wandb` for some method)."""
    return any(study.uses_wandb(m) for m in study.methods)


def summary_table(study: Study, rows: list[dict], metric: str) -> list[dict[str, Any]]:
    """Mean, std and count over seeds of ``metric`` per method and labelled count (NaN cells left out)."""
    out = []
    for method in study.methods:
        for n in study.labelled:
            v = [
                r["metrics"][metric]
                for r in rows
                if r["method"] == method and r["labelled"] == n and metric in r["metrics"]
            ]
            v = [x for x in v if not math.isnan(x)]
            if v:
                out.append(
                    {
                        "method": method,
                        "labelled": "all" if n is None else n,
                        "metric": metric,
                        "mean": float(np.mean(v)),
                        "std": float(np.std(v)),
                        "n": len(v),
                    }
                )
    return out


def log_summary_to_wandb(study: Study) -> Path | None:
    """One W&B run for the whole study (group = the study, job type ``study-summary``): ``results.csv``
    as a Table, the mean +- std per method and labelled count as a Table, and per metric the mean
    curve against the labelled count (a line chart) and the error-bar plot (an image), as in paper
    000's Tables 1-2; a ``models`` Table naming each cell's W&B run and model artifact
    (``model-<run id>:best``), and, online, those artifacts used by the summary run, so W&B's lineage
    graph links the study to the exact weights of every cell. Online with W&B credentials, offline
    (under ``<out_dir>/summary``) otherwise. Returns the local run folder."""
    import wandb

    from ..lightning.loggers import has_wandb_credentials

    res = collect(study)
    rows = res["rows"]
    if not rows:
        return None
    metrics = study.metrics or sorted({k for r in rows for k in r["metrics"] if not k.startswith("test_last/")})
    metrics = [*metrics, *(m.replace("test/", "test_last/", 1) for m in metrics if m.startswith("test/"))]
    opts = dict(study.wandb or {})
    out = study.out_dir / "summary"
    out.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=opts.get("project", "retinalab"),
        entity=opts.get("entity"),
        group=study.name,
        name=f"{study.name}/summary",
        job_type="study-summary",
        tags=["study-summary", study.selection],
        dir=str(out),
        reinit=True,
        mode="online" if has_wandb_credentials() else "offline",
        config={
            "study": study.name,
            "methods": {k: str(v) for k, v in study.methods.items()},
            "labelled": ["all" if n is None else n for n in study.labelled],
            "seeds": study.seeds,
            "selection": study.selection,
            "cells": len(study.cells()),
            "finished": len(rows),
            "failed": len(res["failed"]),
        },
    )
    try:
        import pandas as pd

        payload: dict[str, Any] = {"results": wandb.Table(dataframe=pd.read_csv(study.out_dir / "results.csv"))}
        summary = [row for m in metrics for row in summary_table(study, rows, m)]
        payload["summary"] = wandb.Table(
            columns=["method", "labelled", "metric", "mean", "std", "n"],
            data=[[r["method"], str(r["labelled"]), r["metric"], r["mean"], r["std"], r["n"]] for r in summary],
        )
        numeric = [n for n in study.labelled if n is not None]
        x_all = max(numeric) * 1.25 if numeric else 1
        xs = [x_all if n is None else n for n in study.labelled]
        for m in metrics:
            table = {(r["method"], r["labelled"]): r["mean"] for r in summary if r["metric"] == m}
            if not table:
                continue
            ys = [
                [table.get((method, "all" if n is None else n), float("nan")) for n in study.labelled]
                for method in study.methods
            ]
            payload[f"curves/{m}"] = wandb.plot.line_series(
                xs=xs,
                ys=ys,
                keys=list(study.methods),
                title=f"{study.name}: {m} (mean over seeds)",
                xname="labelled images",
            )
            png = study.out_dir / f"{m.replace('/', '_')}.png"
            if png.is_file():
                payload[f"plots/{m}"] = wandb.Image(str(png), caption=f"{m}: mean +- std over seeds")
        payload["models"] = wandb.Table(
            columns=["method", "labelled", "seed", "run", "artifact"], data=model_rows(rows)
        )
        link_model_artifacts(run, rows)
        run.log(payload)
        for r in summary:
            run.summary[f"{r['metric']}/{r['method']}/n{r['labelled']}"] = r["mean"]
    finally:
        run_dir = Path(run.dir).parent
        run.finish()
    if not has_wandb_credentials():
        from ..lightning.loggers import wait_for_offline_run

        wait_for_offline_run(run_dir)  # the file complete before anyone reads it back
    return run_dir


def _plot(study: Study, rows: list[dict], metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    numeric = [n for n in study.labelled if n is not None]
    x_all = (max(numeric) * 1.25) if numeric else 1
    for method in study.methods:
        xs, means, stds = [], [], []
        for n in study.labelled:
            v = [
                r["metrics"][metric]
                for r in rows
                if r["method"] == method and r["labelled"] == n and metric in r["metrics"]
            ]
            v = [x for x in v if not math.isnan(x)]
            if v:
                xs.append(x_all if n is None else n)
                means.append(np.mean(v))
                stds.append(np.std(v))
        if xs:
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("labelled images")
    ax.set_ylabel(metric)
    ax.set_title(study.name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure_atomic(fig, study.out_dir / f"{metric.replace('/', '_')}.png")


def model_rows(rows: list[dict]) -> list[list[Any]]:
    """One row per finished cell: method, labelled count, seed, its W&B run id and model artifact
    (``model-<id>:best``; empty where the cell's run did not log one, e.g. offline)."""
    out = []
    for r in rows:
        run = r.get("wandb_run") or {}
        artifact = f"{run['artifact']}:best" if run.get("artifact") else ""
        out.append(
            [
                r["method"],
                "all" if r["labelled"] is None else str(r["labelled"]),
                r["seed"],
                run.get("id") or "",
                artifact,
            ]
        )
    return out


def link_model_artifacts(run: Any, rows: list[dict]) -> int:
    """Online: mark each cell's best model artifact as used by the summary run (W&B's lineage links the
    study to its cells' weights). Returns how many were linked; an artifact W&B does not have (a cell
    that failed to upload) is logged and skipped."""
    if getattr(run, "offline", False) or getattr(getattr(run, "settings", None), "mode", "") == "offline":
        return 0
    linked = 0
    for r in rows:
        cell_run = r.get("wandb_run") or {}
        if not cell_run.get("artifact"):
            continue
        prefix = "/".join(p for p in (cell_run.get("entity"), cell_run.get("project")) if p)
        name = f"{prefix}/{cell_run['artifact']}:best" if prefix else f"{cell_run['artifact']}:best"
        try:
            run.use_artifact(name, type="model")
            linked += 1
        except Exception as e:  # noqa: BLE001 - the summary must not fail on one cell's missing upload
            log.warning("study summary: cannot link %s (%s)", name, e)
    return linked
