"""One benchmark fit, shared by label_efficiency.py and ssl_gan_factors.py (not a benchmark: ``make
bench`` skips files starting with _): ``retinalab fit`` of a shipped config on a synthetic set, then
tests of its last and its best-on-validation weights, the per-photograph predictions saved for paired
bootstrap intervals, and the task's own diagnostics (``gan/...``, ``fixmatch/...``) at the end of the fit."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
METRICS = ("image_auroc", "patch_auroc")


def fit_and_test(
    config: str,
    root: Path,
    n_labeled: int | None,
    seed: int,
    work: Path,
    tag: str,
    epochs: int,
    val: int,
    test: int,
    extra: list[str],
    device: str | None = None,
    precision: str | None = None,
) -> dict:
    """Fit ``config`` (relative to the repository) on ``root`` with ``n_labeled`` labelled photographs
    (``None``: all) and ``seed`` (split, labelled subset and training), in ``<work>/runs/<tag>``; test
    the last and the best checkpoints. Returns the result line: ``best`` / ``last`` test AUROCs,
    ``val_best`` (the monitored validation metric of the best checkpoint), ``steps`` (optimiser steps
    of the classifier), ``fit_s``, ``diagnostics`` and where the test predictions went
    (``<work>/predictions/<tag>.npz``)."""
    from retinalab.experiments.launch import cap_workers, limit_threads
    from retinalab.lightning.cli import cli

    threads = limit_threads()  # $RETINALAB_THREADS under --parallel
    out = work / "runs" / tag
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # the configs' relative checkpoint folder (runs/<name>/checkpoints) lands in the run's folder
    args = [
        "--config",
        str(REPO / config),
        "--data.root",
        str(root),
        f"--data.num_labeled_images={'null' if n_labeled is None else n_labeled}",
        f"--data.seed={seed}",
        f"--seed_everything={seed}",
        f"--trainer.max_epochs={epochs}",
        f"--trainer.default_root_dir={out}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--data.val_size={val}",
        f"--data.test_size={test}",
        f"--data.split_file={out / 'split.json'}",
        *extra,
    ]
    if device:
        args += [f"--trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}", "--trainer.devices=1"]
    if precision:
        args.append(f"--trainer.precision={precision}")
    t0 = time.perf_counter()
    c = cli(args, run=False)
    cap_workers(c.datamodule, threads)
    c.trainer.fit(c.model, c.datamodule)
    fit_s = time.perf_counter() - t0
    gan = hasattr(c.model, "generator")
    line: dict = {
        "labels": n_labeled,
        "seed": seed,
        "fit_s": round(fit_s, 1),
        "steps": c.trainer.global_step // (2 if gan else 1),
        "train_images": c.datamodule.summary()["train"]["images"],
        "test_images": len(c.datamodule.rows["test"]),
        "device": str(c.trainer.strategy.root_device),
        "diagnostics": {
            k: round(float(v), 4) for k, v in c.trainer.callback_metrics.items() if k.startswith(("gan/", "fixmatch/"))
        },
    }
    ckpt = c.trainer.checkpoint_callback  # the monitored one (val/image_auroc in the synthetic configs)
    line["val_best"] = float(ckpt.best_model_score) if ckpt is not None and ckpt.best_model_score is not None else None
    preds = {}
    # "last": the weights in memory at the end of training (first, before "best" replaces them; with
    # a monitored ModelCheckpoint, Lightning 2.6 rewrites last.ckpt only when "best" improves)
    for ckpt in ("last", "best"):
        res = c.trainer.test(
            c.model, datamodule=c.datamodule, ckpt_path=None if ckpt == "last" else "best", verbose=False
        )[0]
        line[ckpt] = {m: float(res[f"test/{m}"]) for m in METRICS}
        rec = c.model.eval_records["test"]
        preds[f"{ckpt}_probs"], preds[f"{ckpt}_targets"] = rec["probs"], rec["targets"]
    (work / "predictions").mkdir(exist_ok=True)
    np.savez_compressed(work / "predictions" / f"{tag}.npz", **preds)
    line["predictions"] = f"predictions/{tag}.npz"
    line["run_s"] = round(time.perf_counter() - t0, 1)
    return line


def paired_image_auroc(
    a_lines: list[dict], b_lines: list[dict], work: Path, ckpt: str = "best", auroc=None
) -> tuple[float, float, float, list[float]] | None:
    """Image AUROC of run A minus run B, seed by seed on the same test photographs (each pair of result
    lines from :func:`fit_and_test`): the mean difference, its 95% bootstrap interval over test
    photographs (each seed's two runs resampled together) and the per-seed differences; ``None`` when a
    seed's two runs did not score the same photographs. ``ckpt`` names the weights in the predictions file
    (``<ckpt>_probs``, ``<ckpt>_targets``); ``auroc(line)`` is a line's image AUROC for them (default
    ``line[ckpt]["image_auroc"]``)."""
    import statistics

    from retinalab.metrics.bootstrap import (
        bootstrap_interval,
        difference_statistic,
        image_auroc_statistic,
    )

    stats, diffs = [], []
    for la, lb in zip(a_lines, b_lines, strict=True):
        za, zb = np.load(work / la["predictions"]), np.load(work / lb["predictions"])
        ta, tb = za[f"{ckpt}_targets"], zb[f"{ckpt}_targets"]
        if ta.shape != tb.shape or not np.array_equal(ta, tb):
            return None
        stats.append(
            difference_statistic(
                image_auroc_statistic(za[f"{ckpt}_probs"].sum(1), ta.max(1)),
                image_auroc_statistic(zb[f"{ckpt}_probs"].sum(1), tb.max(1)),
            )
        )
        of = auroc or (lambda line: line[ckpt]["image_auroc"])
        diffs.append(of(la) - of(lb))
    low, high = bootstrap_interval(stats)
    return statistics.mean(diffs), low, high, diffs


def write_child_line(work: Path, name: str, line: dict) -> None:
    """A ``--parallel`` child's result line, written atomically to ``<work>/lines/<name>.json`` for
    :func:`run_children` to collect."""
    import json

    from retinalab.utils.io import write_text_atomic

    write_text_atomic(work / "lines" / f"{name}.json", json.dumps(line))


def run_children(children: dict[str, list[str]], work: Path, parallel: int, device: str | None, on_line) -> dict:
    """Run each child command (name -> argv of a script's ``--one`` mode) as its own process,
    ``parallel`` at a time per GPU or on the CPU (:mod:`retinalab.experiments.launch`), each logging to
    ``<work>/runs/<name>/run.log``; ``on_line(name, line)`` gets each child's result line (from
    :func:`write_child_line`, with ``process_s``) as it ends. Returns ``codes`` (exit status per
    name), ``wall_s``, ``start`` (unix seconds) and ``slots``."""
    import json

    from retinalab.experiments.launch import Job, plan_slots, run_jobs

    slots = plan_slots(parallel, device or "cpu")
    jobs = []
    for name, argv in children.items():
        (work / "lines" / f"{name}.json").unlink(missing_ok=True)
        jobs.append(Job(name, argv, work / "runs" / name / "run.log"))

    def collected(job, rc: int, seconds: float) -> None:
        path = work / "lines" / f"{job.name}.json"
        if rc == 0 and path.is_file():
            line = json.loads(path.read_text())
            line["process_s"] = round(seconds, 1)
            on_line(job.name, line)

    print(
        f"{len(jobs)} fits as {len(slots)} concurrent processes ({slots[0].label}, {slots[0].threads} CPU threads "
        "each)",
        flush=True,
    )
    wall, start = time.perf_counter(), time.time()
    codes = run_jobs(jobs, slots, collected, prefix="  ")
    return {"codes": codes, "wall_s": time.perf_counter() - wall, "start": start, "slots": slots}
