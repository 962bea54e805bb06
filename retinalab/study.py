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
rerun skips it, so a killed study resumes. A failing cell writes ``failed.json`` and the study goes
on. ``results.csv``, ``results.md`` (mean +- std per method and count) and ``<metric>.png`` (metric
against labelled images, error bars) are rewritten after every cell. ``--cell i`` runs one cell (a
SLURM array task), ``--collect`` only aggregates.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

log = logging.getLogger(__name__)

SELECTIONS = ("random", "egl")


@dataclass
class Cell:
    method: str
    labelled: int | None
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}/n{'all' if self.labelled is None else self.labelled}_s{self.seed}"


@dataclass
class Study:
    name: str
    out_dir: Path
    methods: dict[str, Path]
    labelled: list[int | None]
    seeds: list[int]
    selection: str = "random"
    metrics: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    method_overrides: dict[str, list[str]] = field(default_factory=dict)
    wandb: dict[str, Any] | None = None

    @classmethod
    def load(cls, path: str | Path) -> Study:
        """Read and check a study config; errors name the file and the key."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"{path}: cannot read the study config ({e})") from e
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a study config is a mapping with name, methods, labelled, seeds")
        missing = [k for k in ("name", "methods", "labelled", "seeds") if k not in raw]
        if missing:
            raise ValueError(f"{path}: missing key(s) {missing}")
        known = {"name", "out_dir", "methods", "labelled", "seeds", "selection", "metrics", "overrides", "method_overrides", "wandb"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
        if raw.get("selection", "random") not in SELECTIONS:
            raise ValueError(f"{path}: selection {raw['selection']!r} is not one of {list(SELECTIONS)}")
        methods = {}
        for name, cfg in dict(raw["methods"]).items():
            p = Path(cfg)
            if not p.is_file():
                raise ValueError(f"{path}: method {name!r}: config {cfg} does not exist")
            methods[str(name)] = p
        bad = [m for m in raw.get("method_overrides", {}) if m not in methods]
        if bad:
            raise ValueError(f"{path}: method_overrides for unknown method(s) {bad}")
        labelled = [None if v in (None, "all") else int(v) for v in raw["labelled"]]
        return cls(
            name=str(raw["name"]), out_dir=Path(raw.get("out_dir", f"runs/studies/{raw['name']}")), methods=methods,
            labelled=labelled, seeds=[int(s) for s in raw["seeds"]], selection=raw.get("selection", "random"),
            metrics=list(raw.get("metrics", [])), overrides=[str(o) for o in raw.get("overrides", [])],
            method_overrides={k: [str(o) for o in v] for k, v in raw.get("method_overrides", {}).items()},
            wandb=dict(raw["wandb"]) if raw.get("wandb") else None,
        )

    def cells(self) -> list[Cell]:
        return [Cell(m, n, s) for m in self.methods for n in self.labelled for s in self.seeds]

    def cell_dir(self, cell: Cell) -> Path:
        return self.out_dir / "cells" / cell.name

    def args(self, cell: Cell) -> list[str]:
        d = self.cell_dir(cell)
        n = "null" if cell.labelled is None else str(cell.labelled)
        cfg = yaml.safe_load(self.methods[cell.method].read_text()) or {}
        logger = (cfg.get("trainer") or {}).get("logger")
        # the cell's logs go into the cell's folder (CSV, TensorBoard and W&B loggers take save_dir)
        log_dir = [f"--trainer.logger.init_args.save_dir={d}"] if isinstance(logger, dict) and "class_path" in logger else []
        if self.wandb is not None:  # one W&B run per cell, grouped by study, tagged by method / count / seed / selection
            n_tag = "all" if cell.labelled is None else str(cell.labelled)
            log_dir = ["--trainer.logger=retinalab.loggers.WandbLogger", f"--trainer.logger.init_args.save_dir={d}",
                       f"--trainer.logger.init_args.group={self.name}", f"--trainer.logger.init_args.name={cell.name}",
                       f"--trainer.logger.init_args.tags=[{cell.method},labelled_{n_tag},seed_{cell.seed},{self.selection}]"]
            log_dir += [f"--trainer.logger.init_args.{k}={v}" for k, v in self.wandb.items()]
        return [
            "--config", str(self.methods[cell.method]), *self.overrides, *self.method_overrides.get(cell.method, []),
            f"--data.num_labeled_images={n}", f"--data.seed={cell.seed}", f"--seed_everything={cell.seed}",
            f"--trainer.default_root_dir={d}", f"--data.split_file={d / 'split.json'}", *log_dir,
            # an EGL active learner picks the labelled images (patch datamodules; paper 000's future work)
            *([f"--data.labeled_selection={self.selection}"] if self.selection != "random" else []),
        ]


def _atomic_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


def run_cell(study: Study, cell: Cell) -> dict[str, Any]:
    """Fit and test one cell in this process; returns the test metrics (written to ``cell.json``)."""
    from .main import cli

    d = study.cell_dir(cell)
    args = study.args(cell)
    c = cli(args, run=False)
    c.trainer.fit(c.model, c.datamodule)
    ckpt = c.trainer.checkpoint_callback
    best = ckpt.best_model_path if ckpt is not None and getattr(ckpt, "monitor", None) and ckpt.best_model_path else None
    # the final weights (the paper trains a fixed number of epochs and selects nothing), then the best
    # checkpoint, which replaces them in memory
    last = c.trainer.test(c.model, c.datamodule, verbose=False)
    res = c.trainer.test(c.model, c.datamodule, ckpt_path=best, verbose=False) if best else last
    from pytorch_lightning.loggers import WandbLogger

    for lg in c.trainer.loggers:
        if isinstance(lg, WandbLogger) and lg._experiment is not None:
            lg.experiment.finish()  # one W&B run per cell: close it before the next cell starts one
    metrics: dict[str, float] = {}
    for part in res:
        metrics |= {k.split("/dataloader_idx")[0]: float(v) for k, v in part.items()}
    for part in last:  # test_last/...: the same figures for the final weights
        metrics |= {k.split("/dataloader_idx")[0].replace("test/", "test_last/", 1): float(v) for k, v in part.items()}
    payload = {"method": cell.method, "labelled": cell.labelled, "seed": cell.seed, "checkpoint": best, "metrics": metrics,
               "split_hash": getattr(c.datamodule, "split_hash", None), "args": args}
    _atomic_json(d / "cell.json", payload)
    return payload


def run_study(study: Study, only: int | None = None, rerun_failed: bool = False) -> dict[str, int]:
    """Run the cells not finished yet (or only cell ``only``); returns counts of done/failed/skipped."""
    cells = study.cells()
    if only is not None:
        if not 0 <= only < len(cells):
            raise ValueError(f"--cell {only}: the study has cells 0..{len(cells) - 1}")
        cells = [cells[only]]
    stats = {"done": 0, "failed": 0, "skipped": 0}
    for i, cell in enumerate(cells):
        d = study.cell_dir(cell)
        if (d / "cell.json").is_file() or ((d / "failed.json").is_file() and not rerun_failed):
            stats["skipped"] += 1
            continue
        log.info("study %s: cell %d/%d %s", study.name, i + 1, len(cells), cell.name)
        print(f"[study {study.name}] cell {i + 1}/{len(cells)}: {cell.name}", flush=True)
        try:
            run_cell(study, cell)
            (d / "failed.json").unlink(missing_ok=True)
            stats["done"] += 1
        except Exception as e:  # noqa: BLE001 - one failed cell must not stop the study
            _atomic_json(d / "failed.json", {"cell": cell.name, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-5000:]})
            log.error("study %s: cell %s failed: %s", study.name, cell.name, e)
            print(f"[study {study.name}] cell {cell.name} FAILED: {type(e).__name__}: {e}", flush=True)
            stats["failed"] += 1
        if only is None:
            collect(study)
    return stats


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
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "labelled", "seed", *metrics])
    for r in rows:
        w.writerow([r["method"], "all" if r["labelled"] is None else r["labelled"], r["seed"], *[r["metrics"].get(m, "") for m in metrics]])
    tmp = study.out_dir / ".results.csv.tmp"
    tmp.write_text(buf.getvalue())
    os.replace(tmp, study.out_dir / "results.csv")
    md = [f"# Study {study.name}", "", f"{len(rows)} of {len(study.cells())} cells finished, {len(failed)} failed; mean +- std over seeds.", ""]
    counts = study.labelled
    for m in metrics:
        md += [f"## {m}", "", "| method | " + " | ".join("all" if n is None else str(n) for n in counts) + " |", "|---|" + "---|" * len(counts)]
        for method in study.methods:
            cells = []
            for n in counts:
                v = [r["metrics"][m] for r in rows if r["method"] == method and r["labelled"] == n and m in r["metrics"] and not math.isnan(r["metrics"][m])]
                cells.append(f"{np.mean(v):.3f} +- {np.std(v):.3f} ({len(v)})" if v else "-")
            md.append(f"| {method} | " + " | ".join(cells) + " |")
        md.append("")
        _plot(study, rows, m)
    if failed:
        md += ["## Failed cells", ""] + [f"* {f['cell']}: {f['error']}" for f in failed] + [""]
    tmp = study.out_dir / ".results.md.tmp"
    tmp.write_text("\n".join(md))
    os.replace(tmp, study.out_dir / "results.md")
    return {"rows": rows, "failed": failed}


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
            v = [r["metrics"][metric] for r in rows if r["method"] == method and r["labelled"] == n and metric in r["metrics"]]
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    path = study.out_dir / f"{metric.replace('/', '_')}.png"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


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
