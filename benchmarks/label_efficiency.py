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
ConvNet + 0.05 image AUROC at 10 labels.

    python benchmarks/label_efficiency.py [--images 541] [--seeds 0 1 2] [--labels 10 40] [--epochs 3]
                                          [--only ceiling] [--lesion-contrast 1] [--work DIR]

The networks and their CPU-sized settings (width, dropout) come from conf/convnet/synthetic.yaml and
conf/ssl_gan/synthetic.yaml. Each finished run appends a line to ``<work>/results.jsonl`` at once (and
its test predictions to ``<work>/predictions/``); rerunning with the same ``--work`` skips finished runs.
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

from _common import machine  # noqa: E402

from retinalab.main import cli  # noqa: E402
from retinalab.metrics.bootstrap import (  # noqa: E402
    bootstrap_interval,
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


def run_one(arm: str, n_labeled: int | None, seed: int, a: argparse.Namespace, root: Path, work: Path) -> dict:
    """Fit one arm on one split, test its best and last checkpoints; returns the result line."""
    slug, method, extra = RUNS[arm]
    tag = f"{slug}-{n_labeled or 'all'}-{seed}"
    out = work / "runs" / tag
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # the configs' relative checkpoint folder (runs/<name>/checkpoints) lands in the run's folder
    args = [
        "fit", "--config", str(REPO / CONFIGS[method]), "--data.root", str(root),
        f"--data.num_labeled_images={'null' if n_labeled is None else n_labeled}", f"--data.seed={seed}",
        f"--seed_everything={seed}", f"--trainer.max_epochs={a.epochs}", f"--trainer.default_root_dir={out}",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--data.val_size={a.val}", f"--data.test_size={a.test}", f"--data.split_file={out / 'split.json'}",
        *extra,
    ]
    if method == "SSL-GAN":
        args.append(f"--model.lr_decay_start={max(1, int(a.epochs * 2 / 3))}")
    t0 = time.perf_counter()
    c = cli(args)
    fit_s = time.perf_counter() - t0
    line: dict = {"arm": arm, "labels": n_labeled, "seed": seed, "fit_s": round(fit_s, 1),
                  "steps": c.trainer.global_step // (2 if method == "SSL-GAN" else 1),
                  "train_images": c.datamodule.summary()["train"]["images"], "test_images": len(c.datamodule.rows["test"])}
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
    return line


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=541, help="photographs drawn (about 55%% have patch labels: "
                    "the pixel-annotated ones and the grade-0 grading ones)")
    ap.add_argument("--val", type=int, default=50, help="validation photographs")
    ap.add_argument("--test", type=int, default=100, help="test photographs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--labels", type=int, nargs="+", default=[10, 40])
    ap.add_argument("--epochs", type=int, default=3, help="epochs of every run (an SSL-GAN epoch is one pass over the unlabelled pool)")
    ap.add_argument("--only", choices=["ceiling"], help="run only the supervised ceiling (the preset's calibration)")
    ap.add_argument("--preset", default="benchmark")
    ap.add_argument("--lesion-contrast", type=float, default=1.0, help="multiplies the preset's lesion opacity (calibration only)")
    ap.add_argument("--work", help="keep data, runs and results here (default: a temporary folder); reruns skip finished runs")
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="retinalab-labeleff-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RETINALAB_CACHE", str(work / "cache"))
    print(f"machine: {machine()}")
    t0 = time.perf_counter()
    root = work / f"idrid-{a.preset}-{a.lesion_contrast:g}"
    if not root.exists():
        write_synthetic("idrid", root, num_images=a.images, seed=1234, size=(768, 510), workers=os.cpu_count() or 1,
                        preset=a.preset, lesion_contrast=a.lesion_contrast)
    results_file = work / "results.jsonl"
    done = [json.loads(x) for x in results_file.read_text().splitlines()] if results_file.exists() else []
    # runs of another dataset or another epoch count in the same --work are not reused
    finished = {(d["arm"], d["labels"], d["seed"]): d for d in done if d.get("data") == root.name and d.get("epochs") == a.epochs}
    plan = [(CEILING, None, s) for s in a.seeds]
    if a.only != "ceiling":
        plan += [(arm, n, s) for s in a.seeds for n in a.labels for arm in ARMS]
    for arm, n, seed in plan:
        if (arm, n, seed) in finished:
            continue
        line = run_one(arm, n, seed, a, root, work)
        line["data"], line["epochs"] = root.name, a.epochs
        with results_file.open("a") as f:  # one line per finished run, at once
            f.write(json.dumps(line) + "\n")
        finished[(arm, n, seed)] = line
        print(f"[{time.perf_counter() - t0:6.0f}s] seed {seed} {arm:32s} labelled {n or 'all'!s:>3s}: {line['steps']} steps, "
              f"image AUROC {line['best']['image_auroc']:.3f} (last {line['last']['image_auroc']:.3f}), "
              f"patch AUROC {line['best']['patch_auroc']:.3f}", flush=True)

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
            print("| method | " + " | ".join(f"{n} labelled" for n in a.labels) + " |")
            print("|---|" + "---|" * len(a.labels))
            for arm in ARMS:
                row = [cell([finished[(arm, n, s)] for s in a.seeds], ckpt, metric, work) for n in a.labels]
                steps = statistics.mean(finished[(arm, a.labels[0], s)]["steps"] for s in a.seeds)
                print(f"| {arm} ({steps:.0f} steps at {a.labels[0]}) | " + " | ".join(row) + " |")

    def mean(arm: str, n: int | None, metric: str = "image_auroc") -> float:
        return statistics.mean(finished[(arm, n, s)]["best"][metric] for s in a.seeds)

    print("\nTargets (image AUROC, best-on-validation checkpoint, mean over seeds):")
    c = mean(CEILING, None)
    print(f"- supervised ceiling >= 0.85 (calibration window 0.85-0.95): {c:.3f} -> {'met' if c >= 0.85 else 'MISSED'}"
          f"{'' if c <= 0.95 else ' (above the calibration window)'}")
    if a.only != "ceiling":
        n = min(a.labels)
        gan = mean("SSL-GAN", n)
        for arm in ("ConvNet, equal epochs", "ConvNet, equal steps"):
            cn = mean(arm, n)
            print(f"- at {n} labels, SSL-GAN {gan:.3f} and {arm} {cn:.3f} both > 0.5 -> {'met' if min(gan, cn) > 0.5 else 'MISSED'}")
            print(f"- at {n} labels, SSL-GAN >= {arm} + 0.05: {gan:.3f} vs {cn + 0.05:.3f} -> {'met' if gan >= cn + 0.05 else 'MISSED'}")
    print(f"\ntotal time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
