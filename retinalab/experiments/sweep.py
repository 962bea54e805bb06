"""``retinalab sweep``: run a W&B sweep file locally, without a W&B server.

``conf/sweeps/*.yaml`` are ordinary W&B sweep configurations (``wandb sweep conf/sweeps/x.yaml`` then
``wandb agent ...`` uses them unchanged on a cluster with a server)::

    method: grid                      # grid or random here (bayes needs the W&B server)
    metric: {name: val/image_auroc, goal: maximize}
    parameters:
      model.lr_d: {values: [1.0e-4, 3.0e-4]}
      model.width: {distribution: uniform, min: 0.5, max: 1.0}
    command: [${env}, ${interpreter}, -m, retinalab, fit, --config, conf/ssl_gan/idrid.yaml, ${args}]

Locally, ``${env}`` is dropped, ``${interpreter}`` is this Python, ``${args}`` becomes
``--<name>=<value>`` per parameter (what W&B's ``${args}`` gives, and what LightningCLI reads), and each
run gets its own ``--trainer.default_root_dir``. Runs go one after another; ``sweep_runs.csv`` lists
each run's parameters, exit status and best value of the metric (from what its logger wrote: the W&B
run's local history, or ``metrics.csv``), and is rewritten after every run. This avoids the PyPI
``sweeps`` package, which pins numpy < 2.

A killed sweep resumes when run again with the same file, ``--count`` and ``--seed``: runs that
finished (``ok`` in ``sweep_runs.csv`` with the same parameters) are kept, and a ``fit`` run that did
not finish goes on from its newest ``last*.ckpt`` (``--ckpt_path last``, in the same run folder and
W&B run) instead of starting over. Delete the output folder to run everything again.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..utils.errors import ConfigError
from ..utils.io import write_dict_rows_atomic
from ..utils.runs import run_lock

METHODS = ("grid", "random")


def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read and check a sweep file; errors name the file and the key."""
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the sweep ({e})") from e
    if not isinstance(cfg, dict) or "parameters" not in cfg or "command" not in cfg:
        raise ConfigError(f"{path}: a sweep needs `parameters` and `command` (W&B sweep format)")
    if "method" not in cfg:  # W&B refuses such a file; running it as a grid would hide the mistake
        raise ConfigError(f"{path}: a sweep needs `method` (W&B sweep format); locally use one of {list(METHODS)}")
    if cfg["method"] not in METHODS:
        raise ConfigError(
            f"{path}: method {cfg.get('method')!r} runs only on a W&B server; locally use one of {list(METHODS)}"
        )
    if "${args}" not in cfg["command"]:
        raise ConfigError(f"{path}: `command` must contain ${{args}} (W&B passes the parameters there)")
    for name, spec in cfg["parameters"].items():
        if not isinstance(spec, dict) or not ({"values", "value", "distribution", "min"} & set(spec)):
            raise ConfigError(f"{path}: parameter {name!r} needs values, value, or min/max (with a distribution)")
    if cfg["method"] == "grid":
        bad = [n for n, s in cfg["parameters"].items() if "values" not in s and "value" not in s]
        if bad:
            raise ConfigError(f"{path}: a grid sweep needs `values` for every parameter; {bad} have none")
    return cfg


def _sample(spec: dict[str, Any], rng: np.random.Generator) -> Any:
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return spec["values"][int(rng.integers(len(spec["values"])))]
    dist = spec.get(
        "distribution", "int_uniform" if isinstance(spec["min"], int) and isinstance(spec["max"], int) else "uniform"
    )
    lo, hi = spec["min"], spec["max"]
    if dist == "uniform":
        return float(rng.uniform(lo, hi))
    if dist == "int_uniform":
        return int(rng.integers(lo, hi + 1))
    if dist in ("log_uniform_values", "log_uniform"):
        if dist == "log_uniform":  # W&B: min/max are natural logs
            lo, hi = math.exp(lo), math.exp(hi)
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    raise ConfigError(
        f"distribution {dist!r} is not supported locally (uniform, int_uniform, log_uniform_values, log_uniform)"
    )


def assignments(cfg: dict[str, Any], count: int | None, seed: int = 0) -> list[dict[str, Any]]:
    """The parameter sets to run: the grid in order (first ``count``), or ``count`` random draws."""
    params = cfg["parameters"]
    if cfg.get("method", "grid") == "grid":
        names = list(params)
        grids = [params[n]["values"] if "values" in params[n] else [params[n]["value"]] for n in names]
        combos = [dict(zip(names, c, strict=True)) for c in itertools.product(*grids)]
        return combos[:count] if count else combos
    if not count:
        raise ConfigError("a random sweep needs --count")
    rng = np.random.default_rng(seed)
    return [{n: _sample(s, rng) for n, s in params.items()} for _ in range(count)]


def command(cfg: dict[str, Any], params: dict[str, Any], run_dir: Path) -> list[str]:
    out: list[str] = []
    for part in cfg["command"]:
        if part == "${env}":
            continue
        if part == "${interpreter}":
            out.append(sys.executable)
        elif part == "${program}":
            out.append(str(cfg.get("program", "")))
        elif part == "${args}":
            out += [f"--{k}={v}" for k, v in params.items()]
        else:
            out.append(str(part))
    if "fit" in out:  # a training run: its own folder (a `retinalab study --cell` run keeps the study's)
        out += [f"--trainer.default_root_dir={run_dir}", f"--trainer.logger.init_args.save_dir={run_dir}"]
    return out


def _logged_runs(run_dir: Path) -> list[Path]:
    """The folders under ``run_dir`` that hold a logger's record: ``metrics.csv`` or a ``wandb/`` run."""
    found = {f.parent for f in run_dir.rglob("metrics.csv")}
    found |= {
        f.parent.parent
        for pattern in ("offline-run-*", "run-*")
        for f in run_dir.rglob(f"wandb/{pattern}")
        if f.is_dir()
    }
    return sorted(found)


def _best(run_dir: Path, metric: str | None, goal: str) -> float | None:
    """The best value of ``metric`` that the run logged (W&B, offline or online, or CSV)."""
    from google.protobuf.message import DecodeError

    from ..lightning.loggers import read_run_metrics

    if not metric:
        return None
    values: list[float] = []
    for folder in _logged_runs(run_dir):
        try:
            history = read_run_metrics(folder)
        except (FileNotFoundError, ValueError, DecodeError):  # an unreadable record: the row gets no value from it
            continue
        if metric in history:
            values += [float(v) for v in history[metric].dropna()]
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return None
    return max(values) if goal == "maximize" else min(values)


def run_sweep(
    path: str | Path, out_dir: str | Path, count: int | None = None, seed: int = 0, dry_run: bool = False
) -> list[dict[str, Any]]:
    """Run the sweep's assignments one by one; returns the rows of ``sweep_runs.csv``.

    The sweep holds ``out_dir``'s lock (:func:`retinalab.utils.runs.run_lock`) while it runs, and each run
    its own folder's: the same sweep started twice on one folder is refused in one line.
    """
    cfg = load_sweep(path)
    if dry_run:
        return _run_sweep(cfg, Path(out_dir), count, seed, dry_run)
    with run_lock(out_dir, f"retinalab sweep {path}"):
        return _run_sweep(cfg, Path(out_dir), count, seed, dry_run)


def _run_sweep(cfg: dict[str, Any], out: Path, count: int | None, seed: int, dry_run: bool) -> list[dict[str, Any]]:
    metric = (cfg.get("metric") or {}).get("name")
    goal = (cfg.get("metric") or {}).get("goal", "maximize")
    rows: list[dict[str, Any]] = []
    before = {} if dry_run else _finished(out, cfg["parameters"])
    for i, params in enumerate(assignments(cfg, count, seed)):
        run_dir = out / f"run_{i:03d}"
        cmd = command(cfg, params, run_dir)
        said = " ".join(f"{k}={v}" for k, v in params.items())
        row = before.get(i)
        if row is not None and all(row.get(k) == str(v) for k, v in params.items()):
            print(f"[sweep] run {i}: {said}: finished before, kept", flush=True)
            rows.append(row)
            continue
        if "fit" in cmd and not any(c.startswith("--ckpt_path") for c in cmd) and any(run_dir.rglob("last*.ckpt")):
            cmd.append("--ckpt_path=last")  # killed before it finished: go on from its latest state
            said += " (resuming from its last checkpoint)"
        print(f"[sweep] run {i}: {said}", flush=True)
        if dry_run:
            print("  " + " ".join(cmd))
            rows.append({"run": i, **params, "status": "dry-run", metric or "metric": ""})
            continue
        # each run its own W&B service: one inherited from this process would outlive a killed run
        # and keep its id "in use", so that the run could not resume
        env = {
            **{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"},
            "WANDB_RUN_GROUP": os.environ.get("WANDB_RUN_GROUP", out.name),
        }
        res = subprocess.run(cmd, env=env)
        best = _best(run_dir, metric, goal)
        rows.append(
            {
                "run": i,
                **params,
                "status": "ok" if res.returncode == 0 else f"exit {res.returncode}",
                metric or "metric": "" if best is None else best,
            }
        )
        _write(out, rows)
    if rows and not dry_run:
        _write(out, rows)
        scored = [r for r in rows if r.get(metric) not in ("", None)]
        if scored:
            top = (max if goal == "maximize" else min)(scored, key=lambda r: float(r[metric]))
            print(
                f"[sweep] best {metric} = {float(top[metric]):.4f}: run {top['run']} "
                + " ".join(f"{k}={top[k]}" for k in cfg["parameters"])
            )
    return rows


def _finished(out: Path, parameters: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The rows of an earlier ``sweep_runs.csv`` in ``out`` whose run finished (``ok``), by run number,
    values as text (a row is kept only if its parameters are those the run gets now)."""
    path = out / "sweep_runs.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {
        int(r["run"]): {**r, "run": int(r["run"])}
        for r in rows
        if r.get("status") == "ok" and set(parameters) <= set(r)
    }


def _write(out: Path, rows: list[dict[str, Any]]) -> None:
    write_dict_rows_atomic(out / "sweep_runs.csv", rows)
