"""EGL versus random selection (paper 002, Figure 2), CPU-sized: F-measure against labels used.

One synthetic e-ophtha layout (the generator's default look, lesion contrast lowered so that the task
is not solved by the first few labels), split by patient with each seed; for every seed and selection
rule (Algorithm 1: patches, Algorithm 2: images) the loop runs once with EGL and once with random
selection, with the same initial set, budget and schedule. Prints the test F-measure after every round
(mean +- std over seeds) side by side, and the mean over rounds (area under the curve / rounds).

    python benchmarks/active_learning.py [--work /tmp/al-bench] [--seeds 0 1 2] [--select patches images] [--epochs-per-round 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from _common import machine  # benchmarks/ is on sys.path when a script runs

from retinalab.active import ActiveLearning, ExudatePatchConfig
from retinalab.active.plots import plot_curves
from retinalab.active.state import read_metrics
from retinalab.synthetic import write_synthetic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/retinalab-al-bench")
    ap.add_argument("--images", type=int, default=80, help="synthetic photographs (half in e_optha_EX)")
    ap.add_argument("--lesion-contrast", type=float, default=0.35)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--select", nargs="+", default=["patches", "images"], choices=["patches", "images"])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--epochs-per-round", type=int, default=1, help="passes over the labelled set per model update")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(a.work)
    root = work / "e-ophtha"
    if not (root / "e_optha_EX").is_dir():
        write_synthetic("eophtha", root, a.images, 1234, (768, 510), 1.0, a.lesion_contrast, os.cpu_count() or 1, True)
    patches = ExudatePatchConfig(image_size=512, patch_size=32, exudate_per_image=30, healthy_per_image=30, grid_stride=32, view_size=384)
    start = time.perf_counter()
    results: dict[str, dict[str, list[list[dict]]]] = defaultdict(lambda: defaultdict(list))
    for select in a.select:
        for seed in a.seeds:
            for acq in ("egl", "random"):
                out = work / "runs" / f"e{a.epochs_per_round}" / select / f"seed{seed}" / acq
                loop = ActiveLearning(
                    dataset="eophtha", root=str(root), reader_args={"parts": ["EX"]}, patches=patches, out_dir=str(out),
                    acquisition=acq, select=select, k=a.k, initial_batches=2, initial_images=2, max_rounds=a.rounds,
                    epochs_per_round=a.epochs_per_round, initial_epochs=a.epochs_per_round,
                    val_size=0.25, test_size=0.25, seed=seed, cache_dir=str(work / "cache"), num_workers=os.cpu_count() or 1,
                    accelerator="cpu", progress=False, track_images=2,
                )
                loop.run(resume=True)
                results[select][acq].append(read_metrics(out / "metrics.csv"))
    seconds = time.perf_counter() - start

    print(f"machine: {machine()}")
    print(f"data: {a.images} synthetic e-ophtha-layout photographs (lesion contrast {a.lesion_contrast}), 32 px patches at 512 px;")
    print(f"LeNet, SGD lr 0.01, batch 32, 8 dihedral variants; k={a.k} per round, {a.rounds} rounds, {a.epochs_per_round} epoch(s) per update;")
    print(f"seeds {a.seeds}; {seconds:.0f} s in all\n")
    for select in a.select:
        egl_runs, rnd_runs = results[select]["egl"], results[select]["random"]
        n = min(len(r) for r in egl_runs + rnd_runs)
        rule = "Algorithm 1 (patches)" if select == "patches" else "Algorithm 2 (images, then k patches)"
        print(f"### {rule}: test F-measure after each round, mean +- std over {len(a.seeds)} seeds\n")
        print("| round | labels EGL | F-measure EGL | labels random | F-measure random |")
        print("|---|---|---|---|---|")
        for i in range(n):
            le = np.mean([r[i]["labels"] for r in egl_runs])
            lr = np.mean([r[i]["labels"] for r in rnd_runs])
            fe = [r[i]["test/f1"] for r in egl_runs]
            fr = [r[i]["test/f1"] for r in rnd_runs]
            print(f"| {i} | {le:.0f} | {np.mean(fe):.3f} +- {np.std(fe):.3f} | {lr:.0f} | {np.mean(fr):.3f} +- {np.std(fr):.3f} |")
        auc_e = [np.mean([row["test/f1"] for row in r[1:n]]) for r in egl_runs]
        auc_r = [np.mean([row["test/f1"] for row in r[1:n]]) for r in rnd_runs]
        print(f"\nmean F-measure over rounds 1-{n - 1}: EGL {np.mean(auc_e):.3f} +- {np.std(auc_e):.3f}, random {np.mean(auc_r):.3f} +- {np.std(auc_r):.3f}\n")
        plot = plot_curves({"egl": egl_runs, "random": rnd_runs}, work / f"figure2_{select}_e{a.epochs_per_round}.png", egl_runs[0][0]["labels"])
        print(f"plot: {plot}\n")


if __name__ == "__main__":
    main()
