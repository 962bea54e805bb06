"""Label efficiency, CPU-sized: paper 000's SSL-GAN and FixMatch against its ConvNet, in two regimes.

The shape of paper 000's Tables 1-2 on synthetic IDRiD-layout sets, one per preset, side by side
(docs/synthetic.md): ``scarce`` (lesions in several looks per type, look-alikes that are not lesions,
backgrounds that vary: 10 labelled photographs do not show a network the variety; calibrated on the
ConvNet alone) and ``benchmark`` (one look per lesion type: 10 labelled photographs already teach a
ConvNet most of it). Neither has a brightness, position or invisible-lesion shortcut. For each preset
and seed (which fixes the split and, nested, the labelled images) it runs:

* the supervised ceiling: the ConvNet with every training image labelled;
* at each label count, on the same split and the same labelled images:
  - the SSL-GAN (the unlabelled stream is every training image, labels hidden);
  - FixMatch (conf/fixmatch/synthetic.yaml: the same network, as many steps as the SSL-GAN);
  - the ConvNet under the paper's protocol: as many epochs as the SSL-GAN, an epoch being one pass
    over the labelled patches (``equal epochs``);
  - the ConvNet at equal compute: as many optimiser steps as the SSL-GAN's discriminator
    (``--data.batches_per_epoch unlabeled``; ``equal steps``).

Every run tests both its best-on-validation checkpoint and its last one (the paper trains a fixed
number of epochs and selects nothing). Printed per preset: test image and patch AUROC as mean +- std
over seeds with a 95% bootstrap interval over test photographs (each seed's test set resampled); the
paired difference of each semi-supervised method to the ConvNet at equal steps (each seed's two runs
scored on the same test photographs, resampled together) with its per-seed values; then the verdicts:
the ``scarce`` calibration windows (ConvNet at equal steps 0.65-0.78 at 10 labels, ceiling >= 0.92),
whether a semi-supervised method beats the ConvNet at equal steps by >= 0.03 with a paired interval
above 0 at ``scarce``'s 10 labels, and ``benchmark``'s earlier targets.

    python benchmarks/label_efficiency.py [--presets scarce benchmark] [--images 541] [--seeds 0 1 2] [--labels 10 40]
                                          [--epochs 3] [--arms ...] [--only ceiling|calibration] [--work DIR]
                                          [--lesion-contrast 1] [--distractors 1] [--device cpu|cuda] [--parallel N]
                                          [--width W]

``--only calibration`` runs what a preset is calibrated on and nothing else: the ceiling and the
ConvNet at equal steps (never a semi-supervised method). The networks and their CPU-sized settings
(width, dropout) come from conf/{convnet,ssl_gan,fixmatch}/synthetic.yaml (``--width 1`` is the
paper's). Each finished run appends a line to ``<work>/results.jsonl`` at once (and its test
predictions to ``<work>/predictions/``); rerunning with the same ``--work`` skips finished runs.

``--parallel N`` runs N fits at a time per visible GPU (with ``--device cuda``) or on the CPU, each as
its own process with its share of the CPU threads (:mod:`retinalab.experiments.launch`, the launcher of
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
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import append_jsonl, machine, read_jsonl  # noqa: E402
from _fits import METRICS, fit_and_test, paired_image_auroc, run_children, write_child_line  # noqa: E402

from retinalab.metrics.bootstrap import (  # noqa: E402
    bootstrap_interval,
    image_auroc_statistic,
    patch_auroc_statistic,
)
from retinalab.synthetic import PRESETS, write_synthetic  # noqa: E402

CONFIGS = {
    "SSL-GAN": "conf/ssl_gan/synthetic.yaml",
    "ConvNet": "conf/convnet/synthetic.yaml",
    "FixMatch": "conf/fixmatch/synthetic.yaml",
}
CEILING = "ConvNet, all labelled (ceiling)"
STEPS = "ConvNet, equal steps"
SEMI = ("SSL-GAN", "FixMatch")
# row name -> (file tag, config, extra arguments); every arm but the ceiling runs at each label count
ARMS = {
    "SSL-GAN": ("sslgan", "SSL-GAN", []),
    "FixMatch": ("fixmatch", "FixMatch", []),
    "ConvNet, equal epochs": ("convnet-epochs", "ConvNet", ["--data.batches_per_epoch=null"]),
    STEPS: ("convnet-steps", "ConvNet", ["--data.batches_per_epoch=unlabeled"]),
}
#: the ``scarce`` preset's calibration windows (ConvNet alone; paper 000: 71.1 at 10 of 149 labelled, 97.8 at all)
SCARCE_AT_10 = (0.65, 0.78)
SCARCE_CEILING = 0.92
RUNS = {CEILING: ("ceiling", "ConvNet", ["--data.batches_per_epoch=null"]), **ARMS}
SLUGS = {slug: arm for arm, (slug, _m, _e) in RUNS.items()}


def run_one(arm: str, n_labeled: int | None, seed: int, a: argparse.Namespace, root: Path, work: Path) -> dict:
    """Fit one arm on one split (``root``: one preset's dataset), test its best and last checkpoints;
    returns the result line."""
    slug, method, extra = RUNS[arm]
    extra = list(extra)
    if a.width is not None:
        extra.append(f"--model.width={a.width}")
        if method == "SSL-GAN":
            extra.append(f"--model.gen_width={a.width}")
    if method == "SSL-GAN":
        extra.append(f"--model.lr_decay_start={max(1, int(a.epochs * 2 / 3))}")
    # one folder and prediction file per preset, arm, count and seed
    tag = f"{root.name}-{slug}-{n_labeled or 'all'}-{seed}"
    line = fit_and_test(
        CONFIGS[method], root, n_labeled, seed, work, tag, a.epochs, a.val, a.test, extra, a.device, a.precision
    )
    line.update(arm=arm, width=a.width)
    return line


def data_name(preset: str, a: argparse.Namespace) -> str:
    """The folder of a preset's synthetic set under ``--work`` (the calibration multipliers in its name)."""
    return (
        f"idrid-{preset}-{a.lesion_contrast:g}"
        + (f"-d{a.distractors:g}" if a.distractors != 1 else "")
        + (f"-s{a.lesion_scale:g}" if a.lesion_scale != 1 else "")
    )


def draw(preset: str, a: argparse.Namespace, root: Path) -> None:
    """Write the preset's synthetic IDRiD layout (seed 1234) unless it is there."""
    if root.exists():
        return
    style = PRESETS[preset]
    if a.distractors != 1:
        style = replace(style, distractors=style.distractors * a.distractors)
    write_synthetic(
        "idrid",
        root,
        num_images=a.images,
        seed=1234,
        size=(768, 510),
        workers=os.cpu_count() or 1,
        preset=style,
        lesion_contrast=a.lesion_contrast,
        lesion_scale=a.lesion_scale,
    )


def child_argv(a: argparse.Namespace, work: Path, preset: str, arm: str, n: int | None, seed: int) -> list[str]:
    """The command that runs one fit in its own process (``--one``) with this run's settings."""
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--work",
        str(work),
        "--images",
        str(a.images),
        "--val",
        str(a.val),
        "--test",
        str(a.test),
        "--epochs",
        str(a.epochs),
        "--lesion-contrast",
        str(a.lesion_contrast),
        "--distractors",
        str(a.distractors),
        "--lesion-scale",
        str(a.lesion_scale),
        "--one",
        f"{preset}:{RUNS[arm][0]}:{'all' if n is None else n}:{seed}",
    ]
    for flag, value in (("--device", a.device), ("--width", a.width), ("--precision", a.precision)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def key(preset: str, arm: str, n: int | None, seed: int) -> tuple:
    """The run that holds ``arm`` at ``n`` labels: at 'all' labels the ConvNet at equal epochs is the ceiling."""
    return (preset, CEILING, None, seed) if n is None and arm == "ConvNet, equal epochs" else (preset, arm, n, seed)


def _label_count(text: str) -> int | None:
    return None if text == "all" else int(text)


def cell(lines: list[dict], ckpt: str, metric: str, work: Path) -> str:
    """mean +- std over seeds [95% bootstrap interval of the mean over test photographs]."""
    vals = [ln[ckpt][metric] for ln in lines]
    stats = []
    for ln in lines:
        z = np.load(work / ln["predictions"])
        probs, targets = z[f"{ckpt}_probs"], z[f"{ckpt}_targets"]
        stats.append(
            image_auroc_statistic(probs.sum(1), targets.max(1))
            if metric == "image_auroc"
            else patch_auroc_statistic(probs, targets)
        )
    low, high = bootstrap_interval(stats)
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} +- {sd:.3f} [{low:.2f}, {high:.2f}]"


def paired(a_lines: list[dict], b_lines: list[dict], work: Path, ckpt: str = "best") -> str:
    """Image AUROC of A minus B, seed by seed on the same test photographs: the mean difference
    [95% bootstrap interval over test photographs, each seed's two runs resampled together] and
    the per-seed differences; "not paired" when a seed's two runs did not score the same photographs."""
    d = paired_image_auroc(a_lines, b_lines, work, ckpt)
    if d is None:
        return "not paired (the runs' test photographs differ)"
    gap, low, high, diffs = d
    return f"{gap:+.3f} [{low:+.2f}, {high:+.2f}] (per seed: {', '.join(f'{x:+.3f}' for x in diffs)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--presets",
        nargs="+",
        choices=sorted(PRESETS),
        default=["scarce", "benchmark"],
        help="synthetic presets, one dataset each, reported side by side (default: scarce benchmark)",
    )
    ap.add_argument(
        "--images",
        type=int,
        default=541,
        help="photographs drawn (about 55%% have patch labels: the pixel-annotated ones and the grade-0 grading ones)",
    )
    ap.add_argument("--val", type=int, default=50, help="validation photographs")
    ap.add_argument("--test", type=int, default=100, help="test photographs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--labels",
        type=_label_count,
        nargs="+",
        default=[10, 40],
        help="labelled photographs per run ('all': every training image)",
    )
    ap.add_argument(
        "--arms",
        nargs="+",
        choices=list(ARMS),
        default=list(ARMS),
        metavar="ARM",
        help=f"which comparisons run at each label count (default all: {', '.join(ARMS)})",
    )
    ap.add_argument(
        "--epochs",
        type=int,
        default=3,
        help="epochs of every run (an SSL-GAN epoch is one pass over the unlabelled pool)",
    )
    ap.add_argument(
        "--only",
        choices=["ceiling", "calibration"],
        help="ceiling: only the supervised ceiling; calibration: the ceiling and the ConvNet at equal steps (what a "
        "preset is calibrated on)",
    )
    ap.add_argument(
        "--lesion-contrast", type=float, default=1.0, help="multiplies the presets' lesion opacity (calibration only)"
    )
    ap.add_argument(
        "--distractors",
        type=float,
        default=1.0,
        help="multiplies the presets' number of look-alikes (calibration only)",
    )
    ap.add_argument(
        "--lesion-scale", type=float, default=1.0, help="multiplies the presets' lesion sizes (calibration only)"
    )
    ap.add_argument(
        "--work", help="keep data, runs and results here (default: a temporary folder); reruns skip finished runs"
    )
    ap.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default=None,
        help="one CPU or one GPU per fit (default: the configs' accelerator)",
    )
    ap.add_argument(
        "--precision", default=None, help="Lightning precision of every fit, e.g. bf16-mixed (default: the configs')"
    )
    ap.add_argument(
        "--width",
        type=float,
        default=None,
        help="network width of every method (configs: 0.125, for 2 CPU cores; paper: 1)",
    )
    ap.add_argument(
        "--parallel",
        type=int,
        default=None,
        metavar="N",
        help="N fits at a time per GPU (--device cuda) or on the CPU, each its own process with cores/N threads",
    )
    ap.add_argument(
        "--one", default=None, help=argparse.SUPPRESS
    )  # preset:slug:labels:seed, one fit in this process (--parallel's children)
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="retinalab-labeleff-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RETINALAB_CACHE", str(work / "cache"))
    if a.only == "calibration":
        a.arms = [STEPS]
    if a.one:  # a child of --parallel: one fit, its line written for the parent to collect
        preset, slug, n, seed = a.one.split(":")
        line = run_one(SLUGS[slug], _label_count(n), int(seed), a, work / data_name(preset, a), work)
        line["preset"] = preset
        write_child_line(work, f"{preset}-{slug}-{n}-{seed}", line)
        return
    print(f"machine: {machine()}")
    t0 = time.perf_counter()
    roots = {preset: work / data_name(preset, a) for preset in a.presets}
    for preset, root in roots.items():
        draw(preset, a, root)
    results_file = work / "results.jsonl"
    done = read_jsonl(results_file)  # a line a kill cut short is skipped (its run is redone)
    # runs of another dataset, epoch count or width in the same --work are not reused
    names = {root.name: preset for preset, root in roots.items()}
    finished = {
        (names[d["data"]], d["arm"], d["labels"], d["seed"]): d
        for d in done
        if d.get("data") in names and d.get("epochs") == a.epochs and d.get("width") == a.width
    }
    plan = []
    for preset in a.presets:
        plan += [(preset, CEILING, None, s) for s in a.seeds]
        if a.only != "ceiling":  # at 'all' labels the ConvNet at equal epochs is the ceiling itself
            plan += [key(preset, arm, n, s) for s in a.seeds for n in a.labels for arm in a.arms]
    plan = list(dict.fromkeys(plan))  # in order, once each
    todo = [k for k in plan if k not in finished]

    def record(line: dict) -> None:
        preset = line.pop("preset", None) or next(p for p, r in roots.items() if r.name == line.get("data"))
        line["data"], line["epochs"] = roots[preset].name, a.epochs
        append_jsonl(results_file, line)  # one line per finished run, at once
        finished[(preset, line["arm"], line["labels"], line["seed"])] = line
        print(
            f"[{time.perf_counter() - t0:6.0f}s] {preset} seed {line['seed']} {line['arm']:32s} labelled "
            f"{line['labels'] or 'all'!s:>3s}: "
            f"{line['steps']} steps in {line['fit_s']:.0f} s, image AUROC {line['best']['image_auroc']:.3f} "
            f"(last {line['last']['image_auroc']:.3f}), patch AUROC {line['best']['patch_auroc']:.3f}",
            flush=True,
        )

    if a.parallel is None:
        for preset, arm, n, seed in todo:
            line = run_one(arm, n, seed, a, roots[preset], work)
            line["preset"] = preset
            record(line)
    elif todo:
        children = {
            f"{preset}-{RUNS[arm][0]}-{'all' if n is None else n}-{seed}": child_argv(a, work, preset, arm, n, seed)
            for preset, arm, n, seed in todo
        }
        ran = run_children(children, work, a.parallel, a.device, lambda _name, line: record(line))
        slots = ran["slots"]
        with (work / "parallel.jsonl").open("a") as f:  # start / end: unix seconds, to match GPU samples against
            f.write(
                json.dumps(
                    {
                        "fits": len(todo),
                        "processes": len(slots),
                        "threads": slots[0].threads,
                        "wall_s": round(ran["wall_s"], 1),
                        "start": ran["start"],
                        "end": time.time(),
                        "failed": sorted(k for k, v in ran["codes"].items() if v != 0),
                        "device": a.device,
                    }
                )
                + "\n"
            )
        print(f"{len(todo)} fits in {ran['wall_s']:.0f} s wall clock with {len(slots)} processes", flush=True)
    missing = [k for k in plan if k not in finished]
    if missing:
        raise SystemExit(f"{len(missing)} run(s) did not finish (see {work / 'runs'}/*/run.log): {missing[:5]}")
    for preset in a.presets:
        report(preset, a, finished, work)
    verdicts(a, finished, work)
    print(f"\ntotal time {time.perf_counter() - t0:.0f} s")


def runs_of(finished: dict, preset: str, arm: str, n: int | None, seeds: list[int]) -> list[dict]:
    return [finished[key(preset, arm, n, s)] for s in seeds]


def report(preset: str, a: argparse.Namespace, finished: dict, work: Path) -> None:
    """The tables of one preset: every arm at every label count, and the paired differences."""
    first = next(v for k, v in finished.items() if k[0] == preset)
    print(
        f"\n## Preset {preset!r}\n\nSynthetic IDRiD layout (lesion contrast x{a.lesion_contrast:g}, look-alikes "
        f"x{a.distractors:g}); "
        f"{a.images} photographs drawn, {first['train_images']} train / {a.val} val / {first['test_images']} test; "
        f"seeds {a.seeds}; "
        f"{a.epochs} epochs each"
    )
    print("Cells: mean +- std over seeds [95% bootstrap interval of the mean over test photographs]")
    for ckpt in ("best", "last"):
        what = "best-on-validation checkpoint" if ckpt == "best" else "last checkpoint"
        for metric in METRICS:
            print(f"\ntest/{metric}, {what}\n")
            print(f"{CEILING}: {cell(runs_of(finished, preset, CEILING, None, a.seeds), ckpt, metric, work)}\n")
            if a.only == "ceiling":
                continue
            print("| method | " + " | ".join(f"{n or 'all'} labelled" for n in a.labels) + " |")
            print("|---|" + "---|" * len(a.labels))
            for arm in a.arms:
                row = [cell(runs_of(finished, preset, arm, n, a.seeds), ckpt, metric, work) for n in a.labels]
                steps = statistics.mean(ln["steps"] for ln in runs_of(finished, preset, arm, a.labels[0], a.seeds))
                print(f"| {arm} ({steps:.0f} steps at {a.labels[0] or 'all'}) | " + " | ".join(row) + " |")
    if a.only is None and STEPS in a.arms:
        print(
            f"\nPaired difference of test image AUROC to the {STEPS} (best-on-validation checkpoints, the same test "
            "photographs):\n"
        )
        for arm in [x for x in SEMI if x in a.arms]:
            for n in a.labels:
                d = paired(
                    runs_of(finished, preset, arm, n, a.seeds), runs_of(finished, preset, STEPS, n, a.seeds), work
                )
                print(f"- {arm} - ConvNet at {n or 'all'} labels: {d}")
    if a.only is None:
        mechanism(preset, a, finished)


#: what each semi-supervised method's own diagnostics say at the end of training (retinalab.tasks)
MECHANISM = {
    "SSL-GAN": [
        ("D accuracy real vs generated", "gan/d_accuracy"),
        ("p(fake) real", "gan/p_fake_real"),
        ("p(fake) generated", "gan/p_fake_generated"),
        ("loss_g", "gan/loss_g"),
    ],
    "FixMatch": [
        ("mask rate", "fixmatch/mask_rate"),
        ("pseudo-label accuracy", "fixmatch/pseudo_accuracy"),
        ("lesion precision", "fixmatch/pseudo_lesion_precision"),
        ("lesion recall", "fixmatch/pseudo_lesion_recall"),
        ("pseudo-lesion share", "fixmatch/pseudo_lesion_share"),
        ("true lesion share", "fixmatch/true_lesion_share"),
    ],
}


def mechanism(preset: str, a: argparse.Namespace, finished: dict) -> None:
    """Each semi-supervised method's diagnostics in the last epoch, mean over seeds: the GAN's
    real-vs-generated game, FixMatch's pseudo-labels against the labels the synthetic set hides."""
    for arm in [x for x in SEMI if x in a.arms]:
        names = MECHANISM[arm]
        print(f"\n{arm}, last training epoch (mean over seeds):\n")
        print("| labelled | " + " | ".join(n for n, _ in names) + " |")
        print("|---|" + "---|" * len(names))
        for n in a.labels:
            lines = runs_of(finished, preset, arm, n, a.seeds)
            cells = []
            for _, k in names:
                vals = [ln["diagnostics"][k] for ln in lines if k in ln.get("diagnostics", {})]
                cells.append(f"{statistics.mean(vals):.3f}" if vals else "-")
            print(f"| {n or 'all'} | " + " | ".join(cells) + " |")


def mean(finished: dict, preset: str, arm: str, n: int | None, seeds: list[int], metric: str = "image_auroc") -> float:
    return statistics.mean(ln["best"][metric] for ln in runs_of(finished, preset, arm, n, seeds))


def verdicts(a: argparse.Namespace, finished: dict, work: Path) -> None:
    """The targets of issues 16 and 29, one line each (image AUROC, best-on-validation checkpoint, mean over seeds)."""
    print("\nTargets (image AUROC, best-on-validation checkpoint, mean over seeds):")
    ten = min((n for n in a.labels if n is not None), default=None)
    for preset in a.presets:
        c = mean(finished, preset, CEILING, None, a.seeds)
        if preset == "scarce":
            print(
                f"- scarce: supervised ceiling >= {SCARCE_CEILING} (paper 000: 97.8): {c:.3f} -> "
                f"{'met' if c >= SCARCE_CEILING else 'MISSED'}"
            )
            if ten is not None and STEPS in a.arms:
                cn = mean(finished, preset, STEPS, ten, a.seeds)
                lo, hi = SCARCE_AT_10
                print(
                    f"- scarce: {STEPS} at {ten} labels in [{lo}, {hi}] (paper 000: 71.1): {cn:.3f} -> "
                    f"{'met' if lo <= cn <= hi else 'MISSED'}"
                )
        else:
            print(
                f"- {preset}: supervised ceiling >= 0.85 (calibration window 0.85-0.95): {c:.3f} -> "
                f"{'met' if c >= 0.85 else 'MISSED'}"
                f"{'' if c <= 0.95 else ' (above the calibration window)'}"
            )
        if a.only is not None or ten is None or STEPS not in a.arms:
            continue
        semi = [arm for arm in SEMI if arm in a.arms]
        if preset == "scarce" and semi:
            cn = mean(finished, preset, STEPS, ten, a.seeds)
            wins = []
            for arm in semi:
                low = paired_low(
                    runs_of(finished, preset, arm, ten, a.seeds), runs_of(finished, preset, STEPS, ten, a.seeds), work
                )
                gap = mean(finished, preset, arm, ten, a.seeds) - cn
                print(f"    {arm} - {STEPS} at {ten} labels: {gap:+.3f} (paired interval from {low:+.2f})")
                if gap >= 0.03 and low > 0:
                    wins.append(arm)
            print(
                f"- scarce: a semi-supervised method beats the {STEPS} by >= 0.03 at {ten} labels with a paired "
                "interval above 0: "
                + (
                    f"met ({', '.join(wins)})"
                    if wins
                    else "MISSED: neither does (the differences above; "
                    "benchmarks/ssl_gan_factors.py shows what the SSL-GAN would need)"
                )
            )
        if preset == "benchmark" and "SSL-GAN" in a.arms:
            gan = mean(finished, preset, "SSL-GAN", ten, a.seeds)
            eq = "ConvNet, equal epochs"
            if eq in a.arms:
                cn = mean(finished, preset, eq, ten, a.seeds)
                print(
                    f"- benchmark: at {ten} labels, SSL-GAN >= {eq} + 0.05 (paper 000's protocol): {gan:.3f} vs "
                    f"{cn + 0.05:.3f} -> "
                    f"{'met' if gan >= cn + 0.05 else 'MISSED'}"
                )


def paired_low(a_lines: list[dict], b_lines: list[dict], work: Path, ckpt: str = "best") -> float:
    """The lower end of the 95% paired bootstrap interval of image AUROC A - B (NaN when not paired)."""
    d = paired_image_auroc(a_lines, b_lines, work, ckpt)
    return float("nan") if d is None else d[1]


if __name__ == "__main__":
    main()
