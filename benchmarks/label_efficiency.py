"""Label efficiency, CPU-sized: paper 000's SSL-GAN against its ConvNet at 10 and 40 labelled images.

The shape of paper 000's Tables 1-2 on a synthetic IDRiD-layout set drawn with the ``benchmark``
preset (no brightness, position or invisible-lesion shortcut: docs/synthetic.md), with a test set
large enough to rank methods (100 photographs by default). For each seed (which fixes the split and,
nested, the labelled images) it runs:

* the supervised ceiling: the ConvNet with every training image labelled;
* at each label count, on the same split and the same labelled images:
  - the SSL-GAN (the unlabelled stream is every training image, labels hidden);
  - the ConvNet under the paper's protocol: as many epochs as the SSL-GAN, an epoch being one pass
    over the labelled patches (``equal epochs``);
  - the ConvNet at equal compute: as many optimiser steps as the SSL-GAN's discriminator
    (``--data.batches_per_epoch unlabeled``; ``equal steps``).

Every run tests both its best-on-validation checkpoint and its last one (the paper trains a fixed
number of epochs and selects nothing). Printed: test image and patch AUROC as mean +- std over seeds
with a 95% bootstrap interval over test photographs (each seed's test set resampled), then the
verdicts on the targets of issue 16: ceiling >= 0.85; both methods > 0.5 at 10 labels; SSL-GAN >=
ConvNet + 0.05 image AUROC at 10 labels, with the paired difference (each seed's two runs scored on
the same test photographs, resampled together) and its per-seed values.

    python benchmarks/label_efficiency.py [--images 541] [--seeds 0 1 2] [--labels 10 40] [--epochs 3]
                                          [--only ceiling] [--lesion-contrast 1] [--work DIR]
                                          [--device cpu|cuda] [--parallel N] [--width W] [--arms ...]

The networks and their CPU-sized settings (width, dropout) come from conf/convnet/synthetic.yaml and
conf/ssl_gan/synthetic.yaml (``--width 1`` is the paper's). Each finished run appends a line to
``<work>/results.jsonl`` at once (and its test predictions to ``<work>/predictions/``); rerunning with
the same ``--work`` skips finished runs.

``--parallel N`` runs N fits at a time per visible GPU (with ``--device cuda``) or on the CPU, each as
its own process with its share of the CPU threads (:mod:`retinalab.launch`, the launcher of
``retinalab study --parallel``); each process's output goes to ``<work>/runs/<run>/run.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import append_jsonl, machine, read_jsonl  # noqa: E402

from retinalab.cli import cli  # noqa: E402
from retinalab.metrics.bootstrap import (  # noqa: E402
    bootstrap_interval,
    difference_statistic,
    image_auroc_statistic,
    patch_auroc_statistic,
)
from retinalab.synthetic import write_synthetic  # noqa: E402

CONFIGS = {"SSL-GAN": "conf/ssl_gan/synthetic.yaml", "ConvNet": "conf/convnet/synthetic.yaml"}
CEILING = "ConvNet, all labelled (ceiling)"
# row name -> (file tag, config, extra arguments); every arm but the ceiling runs at each label count
ARMS = {
    "SSL-GAN": ("sslgan", "SSL-GAN", []),
    "ConvNet, equal epochs": ("convnet-epochs", "ConvNet", ["--data.batches_per_epoch=null"]),
    "ConvNet, equal steps": ("convnet-steps", "ConvNet", ["--data.batches_per_epoch=unlabeled"]),
}
RUNS = {CEILING: ("ceiling", "ConvNet", ["--data.batches_per_epoch=null"]), **ARMS}
METRICS = ("image_auroc", "patch_auroc")
SLUGS = {slug: arm for arm, (slug, _m, _e) in RUNS.items()}


def run_one(arm: str, n_labeled: int | None, seed: int, a: argparse.Namespace, root: Path, work: Path) -> dict:
    """Fit one arm on one split, test its best and last checkpoints; returns the result line."""
    from retinalab.launch import cap_workers, limit_threads

    threads = limit_threads()  # $RETINALAB_THREADS under --parallel
    slug, method, extra = RUNS[arm]
    tag = f"{slug}-{n_labeled or 'all'}-{seed}"
    out = work / "runs" / tag
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # the configs' relative checkpoint folder (runs/<name>/checkpoints) lands in the run's folder
    args = [
        "--config", str(REPO / CONFIGS[method]), "--data.root", str(root),
        f"--data.num_labeled_images={'null' if n_labeled is None else n_labeled}", f"--data.seed={seed}",
        f"--seed_everything={seed}", f"--trainer.max_epochs={a.epochs}", f"--trainer.default_root_dir={out}",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--data.val_size={a.val}", f"--data.test_size={a.test}", f"--data.split_file={out / 'split.json'}",
        *extra,
    ]
    if a.device:
        args += [f"--trainer.accelerator={'gpu' if a.device == 'cuda' else 'cpu'}", "--trainer.devices=1"]
    if a.precision:
        args.append(f"--trainer.precision={a.precision}")
    if a.width is not None:
        args.append(f"--model.width={a.width}")
        if method == "SSL-GAN":
            args.append(f"--model.gen_width={a.width}")
    if method == "SSL-GAN":
        args.append(f"--model.lr_decay_start={max(1, int(a.epochs * 2 / 3))}")
    t0 = time.perf_counter()
    c = cli(args, run=False)
    cap_workers(c.datamodule, threads)
    c.trainer.fit(c.model, c.datamodule)
    fit_s = time.perf_counter() - t0
    line: dict = {"arm": arm, "labels": n_labeled, "seed": seed, "fit_s": round(fit_s, 1),
                  "steps": c.trainer.global_step // (2 if method == "SSL-GAN" else 1),
                  "train_images": c.datamodule.summary()["train"]["images"], "test_images": len(c.datamodule.rows["test"]),
                  "device": str(c.trainer.strategy.root_device), "width": a.width}
    preds = {}
    # "last": the weights in memory at the end of training (first, before "best" replaces them; with
    # a monitored ModelCheckpoint, Lightning 2.6 rewrites last.ckpt only when "best" improves)
    for ckpt in ("last", "best"):
        res = c.trainer.test(c.model, datamodule=c.datamodule, ckpt_path=None if ckpt == "last" else "best", verbose=False)[0]
        line[ckpt] = {m: float(res[f"test/{m}"]) for m in METRICS}
        rec = c.model.eval_records["test"]
        preds[f"{ckpt}_probs"], preds[f"{ckpt}_targets"] = rec["probs"], rec["targets"]
    (work / "predictions").mkdir(exist_ok=True)
    np.savez_compressed(work / "predictions" / f"{tag}.npz", **preds)
    line["predictions"] = f"predictions/{tag}.npz"
    line["run_s"] = round(time.perf_counter() - t0, 1)
    return line


def child_argv(a: argparse.Namespace, work: Path, arm: str, n: int | None, seed: int) -> list[str]:
    """The command that runs one fit in its own process (``--one``) with this run's settings."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--work", str(work), "--images", str(a.images), "--val", str(a.val),
            "--test", str(a.test), "--epochs", str(a.epochs), "--preset", a.preset, "--lesion-contrast", str(a.lesion_contrast),
            "--one", f"{RUNS[arm][0]}:{'all' if n is None else n}:{seed}"]
    for flag, value in (("--device", a.device), ("--width", a.width), ("--precision", a.precision)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def key(arm: str, n: int | None, seed: int) -> tuple:
    """The run that holds ``arm`` at ``n`` labels: at 'all' labels the ConvNet at equal epochs is the ceiling."""
    return (CEILING, None, seed) if n is None and arm == "ConvNet, equal epochs" else (arm, n, seed)


def _label_count(text: str) -> int | None:
    return None if text == "all" else int(text)


def cell(lines: list[dict], ckpt: str, metric: str, work: Path) -> str:
    """mean +- std over seeds [95% bootstrap interval of the mean over test photographs]."""
    vals = [ln[ckpt][metric] for ln in lines]
    stats = []
    for ln in lines:
        z = np.load(work / ln["predictions"])
        probs, targets = z[f"{ckpt}_probs"], z[f"{ckpt}_targets"]
        stats.append(image_auroc_statistic(probs.sum(1), targets.max(1)) if metric == "image_auroc" else patch_auroc_statistic(probs, targets))
    low, high = bootstrap_interval(stats)
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} +- {sd:.3f} [{low:.2f}, {high:.2f}]"


def paired(a_lines: list[dict], b_lines: list[dict], work: Path, ckpt: str = "best") -> str:
    """Image AUROC of A minus B, seed by seed on the same test photographs: the mean difference
    [95% bootstrap interval over test photographs, each seed's two runs resampled together] and
    the per-seed differences; "not paired" when a seed's two runs did not score the same photographs."""
    stats, diffs = [], []
    for la, lb in zip(a_lines, b_lines, strict=True):
        za, zb = np.load(work / la["predictions"]), np.load(work / lb["predictions"])
        ta, tb = za[f"{ckpt}_targets"], zb[f"{ckpt}_targets"]
        if ta.shape != tb.shape or not np.array_equal(ta, tb):
            return "not paired (the runs' test photographs differ)"
        sa = image_auroc_statistic(za[f"{ckpt}_probs"].sum(1), ta.max(1))
        sb = image_auroc_statistic(zb[f"{ckpt}_probs"].sum(1), tb.max(1))
        stats.append(difference_statistic(sa, sb))
        diffs.append(la[ckpt]["image_auroc"] - lb[ckpt]["image_auroc"])
    low, high = bootstrap_interval(stats)
    return f"{statistics.mean(diffs):+.3f} [{low:+.2f}, {high:+.2f}] (per seed: {', '.join(f'{d:+.3f}' for d in diffs)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=541, help="photographs drawn (about 55%% have patch labels: "
                    "the pixel-annotated ones and the grade-0 grading ones)")
    ap.add_argument("--val", type=int, default=50, help="validation photographs")
    ap.add_argument("--test", type=int, default=100, help="test photographs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--labels", type=_label_count, nargs="+", default=[10, 40], help="labelled photographs per run ('all': every training image)")
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), metavar="ARM",
                    help=f"which comparisons run at each label count (default all: {', '.join(ARMS)})")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of every run (an SSL-GAN epoch is one pass over the unlabelled pool)")
    ap.add_argument("--only", choices=["ceiling"], help="run only the supervised ceiling (the preset's calibration)")
    ap.add_argument("--preset", default="benchmark")
    ap.add_argument("--lesion-contrast", type=float, default=1.0, help="multiplies the preset's lesion opacity (calibration only)")
    ap.add_argument("--work", help="keep data, runs and results here (default: a temporary folder); reruns skip finished runs")
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="one CPU or one GPU per fit (default: the configs' accelerator)")
    ap.add_argument("--precision", default=None, help="Lightning precision of every fit, e.g. bf16-mixed (default: the configs')")
    ap.add_argument("--width", type=float, default=None, help="network width of both methods (configs: 0.125, for 2 CPU cores; paper: 1)")
    ap.add_argument("--parallel", type=int, default=None, metavar="N",
                    help="N fits at a time per GPU (--device cuda) or on the CPU, each its own process with cores/N threads")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # slug:labels:seed, one fit in this process (--parallel's children)
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="retinalab-labeleff-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RETINALAB_CACHE", str(work / "cache"))
    if a.one:  # a child of --parallel: one fit, its line written for the parent to collect
        slug, n, seed = a.one.split(":")
        root = work / f"idrid-{a.preset}-{a.lesion_contrast:g}"
        line = run_one(SLUGS[slug], _label_count(n), int(seed), a, root, work)
        path = work / "lines" / f"{slug}-{n}-{seed}.json"
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(line))
        os.replace(tmp, path)
        return
    print(f"machine: {machine()}")
    t0 = time.perf_counter()
    root = work / f"idrid-{a.preset}-{a.lesion_contrast:g}"
    if not root.exists():
        write_synthetic("idrid", root, num_images=a.images, seed=1234, size=(768, 510), workers=os.cpu_count() or 1,
                        preset=a.preset, lesion_contrast=a.lesion_contrast)
    results_file = work / "results.jsonl"
    done = read_jsonl(results_file)  # a line a kill cut short is skipped (its run is redone)
    # runs of another dataset, epoch count or width in the same --work are not reused
    finished = {(d["arm"], d["labels"], d["seed"]): d for d in done
                if d.get("data") == root.name and d.get("epochs") == a.epochs and d.get("width") == a.width}
    plan = [(CEILING, None, s) for s in a.seeds]
    if a.only != "ceiling":
        # at 'all' labels the ConvNet at equal epochs is the ceiling itself
        plan += [key(arm, n, s) for s in a.seeds for n in a.labels for arm in a.arms]
    plan = list(dict.fromkeys(plan))  # in order, once each
    todo = [(arm, n, seed) for arm, n, seed in plan if (arm, n, seed) not in finished]

    def record(line: dict) -> None:
        line["data"], line["epochs"] = root.name, a.epochs
        append_jsonl(results_file, line)  # one line per finished run, at once
        finished[(line["arm"], line["labels"], line["seed"])] = line
        print(f"[{time.perf_counter() - t0:6.0f}s] seed {line['seed']} {line['arm']:32s} labelled {line['labels'] or 'all'!s:>3s}: "
              f"{line['steps']} steps in {line['fit_s']:.0f} s, image AUROC {line['best']['image_auroc']:.3f} "
              f"(last {line['last']['image_auroc']:.3f}), patch AUROC {line['best']['patch_auroc']:.3f}", flush=True)

    if a.parallel is None:
        for arm, n, seed in todo:
            record(run_one(arm, n, seed, a, root, work))
    elif todo:
        from retinalab.launch import Job, plan_slots, run_jobs

        slots = plan_slots(a.parallel, a.device or "cpu")
        jobs = {}
        for arm, n, seed in todo:
            tag = f"{RUNS[arm][0]}-{'all' if n is None else n}-{seed}"
            (work / "lines" / f"{tag}.json").unlink(missing_ok=True)
            jobs[tag] = Job(tag, child_argv(a, work, arm, n, seed), work / "runs" / tag / "run.log")

        def collected(job, rc: int, seconds: float) -> None:
            path = work / "lines" / f"{job.name}.json"
            if rc == 0 and path.is_file():
                line = json.loads(path.read_text())
                line["process_s"] = round(seconds, 1)
                record(line)

        print(f"{len(todo)} fits as {len(slots)} concurrent processes ({slots[0].label}, {slots[0].threads} CPU threads each)", flush=True)
        wall, started = time.perf_counter(), time.time()
        codes = run_jobs(list(jobs.values()), slots, collected, prefix="  ")
        wall = time.perf_counter() - wall
        with (work / "parallel.jsonl").open("a") as f:  # start / end: unix seconds, to match GPU samples against
            f.write(json.dumps({"fits": len(todo), "processes": len(slots), "threads": slots[0].threads, "wall_s": round(wall, 1),
                                "start": started, "end": time.time(),
                                "failed": sorted(k for k, v in codes.items() if v != 0), "device": a.device}) + "\n")
        print(f"{len(todo)} fits in {wall:.0f} s wall clock with {len(slots)} processes", flush=True)
    missing = [(arm, n, s) for arm, n, s in plan if (arm, n, s) not in finished]
    if missing:
        raise SystemExit(f"{len(missing)} run(s) did not finish (see {work / 'runs'}/*/run.log): {missing[:5]}")

    first = next(iter(finished.values()))
    print(f"\nSynthetic IDRiD layout, preset {a.preset!r} (lesion contrast x{a.lesion_contrast:g}); {a.images} photographs drawn, "
          f"{first['train_images']} train / {a.val} val / {first['test_images']} test; seeds {a.seeds}; {a.epochs} epochs each")
    print("Cells: mean +- std over seeds [95% bootstrap interval of the mean over test photographs]")
    for ckpt in ("best", "last"):
        what = "best-on-validation checkpoint" if ckpt == "best" else "last checkpoint"
        for metric in METRICS:
            print(f"\ntest/{metric}, {what}\n")
            ceiling = [finished[(CEILING, None, s)] for s in a.seeds]
            print(f"{CEILING}: {cell(ceiling, ckpt, metric, work)}\n")
            if a.only == "ceiling":
                continue
            print("| method | " + " | ".join(f"{n or 'all'} labelled" for n in a.labels) + " |")
            print("|---|" + "---|" * len(a.labels))
            for arm in a.arms:
                row = [cell([finished[key(arm, n, s)] for s in a.seeds], ckpt, metric, work) for n in a.labels]
                steps = statistics.mean(finished[key(arm, a.labels[0], s)]["steps"] for s in a.seeds)
                print(f"| {arm} ({steps:.0f} steps at {a.labels[0] or 'all'}) | " + " | ".join(row) + " |")

    def mean(arm: str, n: int | None, metric: str = "image_auroc") -> float:
        return statistics.mean(finished[(arm, n, s)]["best"][metric] for s in a.seeds)

    print("\nTargets (image AUROC, best-on-validation checkpoint, mean over seeds):")
    c = mean(CEILING, None)
    print(f"- supervised ceiling >= 0.85 (calibration window 0.85-0.95): {c:.3f} -> {'met' if c >= 0.85 else 'MISSED'}"
          f"{'' if c <= 0.95 else ' (above the calibration window)'}")
    if a.only != "ceiling" and "SSL-GAN" in a.arms and any(n is not None for n in a.labels):
        n = min(n for n in a.labels if n is not None)
        gan = mean("SSL-GAN", n)
        for arm in [x for x in ("ConvNet, equal epochs", "ConvNet, equal steps") if x in a.arms]:
            cn = mean(arm, n)
            print(f"- at {n} labels, SSL-GAN {gan:.3f} and {arm} {cn:.3f} both > 0.5 -> {'met' if min(gan, cn) > 0.5 else 'MISSED'}")
            print(f"- at {n} labels, SSL-GAN >= {arm} + 0.05: {gan:.3f} vs {cn + 0.05:.3f} -> {'met' if gan >= cn + 0.05 else 'MISSED'}")
            print(f"    paired difference SSL-GAN - {arm}: "
                  f"{paired([finished[key('SSL-GAN', n, s)] for s in a.seeds], [finished[key(arm, n, s)] for s in a.seeds], work)}")
    print(f"\ntotal time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
