"""EGL versus random selection at equal label counts (paper 002, Figure 2), CPU-sized.

One synthetic e-ophtha layout (the generator's default look, lesion contrast lowered so that the task
is not solved by the first few labels), split by patient with each seed. For every seed and setting
the loop runs with EGL, then with random selection at the EGL run's label (and image) counts, round by
round (``match_labels``), from the same initial set and model:

* ``patches``: Algorithm 1 (k patches per round);
* ``images-selected``: Algorithm 2, line 10 read as k patches by EGL among the chosen image's patches
  (``image_patches: selected_images``, the default);
* ``images-pool``: Algorithm 2, line 10 read as every patch of the chosen image plus k EGL patches
  from the whole pool (``image_patches: pool``).

Prints, per setting, the test F-measure after every round (mean +- std over seeds) for both arms, the
area under the F-measure-vs-labels curve (normalised by the label range: the mean F-measure over it),
the labels each arm needs to reach F >= ``--target`` and the verdict on the paper's claim: EGL needs
fewer labels than random, by a margin larger than the seed spread (the larger of the two arms' standard
deviations). Runs resume: rerunning the command reuses finished rounds.

    python benchmarks/active_learning.py [--work /tmp/retinalab-al-bench] [--seeds 0 1 2 3 4] [--settings patches images-selected images-pool]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine  # benchmarks/ is on sys.path when a script runs

from retinalab.active import ActiveLearning, ExudatePatchConfig
from retinalab.active.plots import plot_curves
from retinalab.active.state import area_under, read_metrics
from retinalab.synthetic import write_synthetic

SETTINGS = {
    "patches": ("Algorithm 1 (k patches by EGL)", dict(select="patches")),
    "images-selected": ("Algorithm 2, line 10 as k EGL patches among the chosen image's patches", dict(select="images", image_patches="selected_images")),
    "images-pool": ("Algorithm 2, line 10 as all the image's patches + k EGL patches from the pool", dict(select="images", image_patches="pool")),
}


def labels_to_reach(rows: list[dict], target: float, key: str = "test/f1") -> float:
    """Labels in use at the first round whose ``key`` is >= ``target`` (NaN: never within the budget)."""
    return next((float(r["labels"]) for r in rows if r[key] >= target), math.nan)


def verdict(egl: list[float], rnd: list[float]) -> str:
    """Whether EGL needed fewer labels than random by more than the seed spread."""
    if any(math.isnan(v) for v in egl):
        return f"MISSED: EGL did not reach the target on {sum(math.isnan(v) for v in egl)} of {len(egl)} seeds"
    reached = [v for v in rnd if not math.isnan(v)]
    if len(reached) < len(rnd):
        return f"HOLDS in part: random did not reach the target on {len(rnd) - len(reached)} of {len(rnd)} seeds within the budget; EGL did on all"
    margin = float(np.mean(rnd) - np.mean(egl))
    spread = max(float(np.std(egl)), float(np.std(rnd)))
    word = "HOLDS" if margin > spread else "MISSED"
    return f"{word}: random needs {margin:+.1f} labels more than EGL on average; seed spread (larger std) {spread:.1f}"


def fmt(values: list[float]) -> str:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return "not reached"
    miss = len(values) - len(v)
    return f"{np.mean(v):.1f} +- {np.std(v):.1f}" + (f" ({miss} of {len(values)} seeds not reached)" if miss else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/retinalab-al-bench")
    ap.add_argument("--images", type=int, default=80, help="synthetic photographs (half in e_optha_EX)")
    ap.add_argument("--lesion-contrast", type=float, default=0.35)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--initial-batches", type=int, default=2, help="Algorithm 1's initial model: batches of 32 random patches")
    ap.add_argument("--initial-images", type=int, default=2, help="Algorithm 2's mu")
    ap.add_argument("--epochs-per-round", type=int, default=1, help="passes over the labelled set per model update")
    ap.add_argument("--initial-augment", action="store_true", help="train the initial model on the dihedral variants too (8x its SGD steps)")
    ap.add_argument("--target", type=float, default=0.9, help="test F-measure to reach")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(a.work)
    root = work / "e-ophtha"
    if not (root / "e_optha_EX").is_dir():
        write_synthetic("eophtha", root, a.images, 1234, (768, 510), 1.0, a.lesion_contrast, os.cpu_count() or 1, True)
    patches = ExudatePatchConfig(image_size=512, patch_size=32, exudate_per_image=30, healthy_per_image=30, grid_stride=32, view_size=384)
    start = time.perf_counter()
    results: dict[str, dict[str, list[list[dict]]]] = {}
    for setting in a.settings:
        results[setting] = {"egl": [], "random": []}
        for seed in a.seeds:
            folder = work / "runs" / f"e{a.epochs_per_round}-k{a.k}-r{a.rounds}{'-ia' if a.initial_augment else ''}" / setting / f"seed{seed}"
            for acq in ("egl", "random"):
                loop = ActiveLearning(
                    dataset="eophtha", root=str(root), reader_args={"parts": ["EX"]}, patches=patches, out_dir=str(folder / acq),
                    acquisition=acq, match_labels=str(folder / "egl") if acq == "random" else None, **SETTINGS[setting][1],
                    k=a.k, initial_batches=a.initial_batches, initial_images=a.initial_images, max_rounds=a.rounds,
                    epochs_per_round=a.epochs_per_round, initial_epochs=a.epochs_per_round, initial_augment=a.initial_augment,
                    val_size=0.25, test_size=0.25, seed=seed, cache_dir=str(work / "cache"), num_workers=os.cpu_count() or 1,
                    accelerator="cpu", progress=False, track_images=0, plot_every=0,
                )
                loop.run(resume=True)
                results[setting][acq].append(read_metrics(folder / acq / "metrics.csv"))
    seconds = time.perf_counter() - start

    print(f"machine: {machine()}")
    print(f"data: {a.images} synthetic e-ophtha-layout photographs (lesion contrast {a.lesion_contrast}), 32 px patches at 512 px, split by patient 50/25/25;")
    initial = "with" if a.initial_augment else "not"
    print(f"LeNet, SGD lr 0.01, batch 32, 8 dihedral variants ({initial} for the initial model: {a.initial_batches} batches of 32 patches, "
          f"or the patches of {a.initial_images} images); k={a.k} per round, {a.rounds} rounds, {a.epochs_per_round} epoch(s) per update;")
    print(f"random arm at the EGL arm's label and image counts, round by round; seeds {a.seeds}; {seconds:.0f} s in all\n")
    summary = []
    for setting in a.settings:
        egl_runs, rnd_runs = results[setting]["egl"], results[setting]["random"]
        n = min(len(r) for r in egl_runs + rnd_runs)
        print(f"### {setting}: {SETTINGS[setting][0]}\n")
        print(f"test F-measure after each round, mean +- std over {len(a.seeds)} seeds (labels: mean over seeds, equal in both arms)\n")
        print("| round | labels | F-measure EGL | F-measure random |")
        print("|---|---|---|---|")
        for i in range(n):
            labels = [r[i]["labels"] for r in egl_runs]
            assert labels == [r[i]["labels"] for r in rnd_runs], "the arms' label counts differ"
            fe, fr = [r[i]["test/f1"] for r in egl_runs], [r[i]["test/f1"] for r in rnd_runs]
            print(f"| {i} | {np.mean(labels):.0f} | {np.mean(fe):.3f} +- {np.std(fe):.3f} | {np.mean(fr):.3f} +- {np.std(fr):.3f} |")
        if SETTINGS[setting][1]["select"] == "images":
            differ = sum(e[i]["images"] != q[i]["images"] for e, q in zip(egl_runs, rnd_runs, strict=True) for i in range(n))
            print(f"\nimages opened: equal in both arms in {len(egl_runs) * n - differ} of {len(egl_runs) * n} rounds"
                  + (" (elsewhere the random images held too few patches and the random arm opened more)" if differ else ""))
        auc_e, auc_r = [area_under(r[:n]) for r in egl_runs], [area_under(r[:n]) for r in rnd_runs]
        need_e, need_r = [labels_to_reach(r[:n], a.target) for r in egl_runs], [labels_to_reach(r[:n], a.target) for r in rnd_runs]
        v = verdict(need_e, need_r)
        print(f"\narea under F-measure vs labels / label range: EGL {np.mean(auc_e):.3f} +- {np.std(auc_e):.3f}, random {np.mean(auc_r):.3f} +- {np.std(auc_r):.3f}")
        print(f"labels to reach F >= {a.target}: EGL {fmt(need_e)}, random {fmt(need_r)}")
        print(f"target (EGL needs fewer labels than random, margin > seed spread): {v}")
        plot = plot_curves({"egl": egl_runs, "random": rnd_runs}, work / f"figure2_{setting}_e{a.epochs_per_round}{'-ia' if a.initial_augment else ''}.png", egl_runs[0][0]["labels"])
        print(f"plot: {plot}\n")
        summary.append((setting, auc_e, auc_r, need_e, need_r, v))
    print(f"### Summary ({len(a.seeds)} seeds)\n")
    print(f"| setting | AUC EGL | AUC random | labels to F >= {a.target}, EGL | random | verdict |")
    print("|---|---|---|---|---|---|")
    for setting, auc_e, auc_r, need_e, need_r, v in summary:
        print(f"| {setting} | {np.mean(auc_e):.3f} +- {np.std(auc_e):.3f} | {np.mean(auc_r):.3f} +- {np.std(auc_r):.3f} | {fmt(need_e)} | {fmt(need_r)} | {v.split(':')[0]} |")


if __name__ == "__main__":
    main()
