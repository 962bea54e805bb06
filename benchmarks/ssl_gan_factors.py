"""What the SSL-GAN's gap to the ConvNet depends on: unsupervised weight, width and steps, on ``scarce``.

Paper 000's SSL-GAN trails its supervised ConvNet at CPU scale (benchmarks/label_efficiency.py). This
script moves one factor at a time from the CPU configuration (conf/ssl_gan/synthetic.yaml: width
0.125 for D and G, unsupervised weight 1, 3 epochs = 276 discriminator steps) on the ``scarce``
preset with 10 labelled photographs, and runs the ConvNet at the same width and the same number of
optimiser steps beside each setting, on the same split and labelled images:

* the weight of the unsupervised (GAN) term in D's loss: 0 (D trained on the labels only, the GAN
  term gone), 0.1, 0.3, 1;
* the width of D and G (and of the ConvNet): 0.125, 0.25, 0.5;
* the number of discriminator steps: 3 and 12 epochs (276 and 1,104 steps).

Each run records its test image and patch AUROC (best-on-validation checkpoint) and the GAN's own
diagnostics at the end of training (D's accuracy at telling real unlabelled patches from generated
ones, the mean p(fake) on each, the generator's feature-matching loss: retinalab.tasks.PatchSSGANTask).
The table gives, per setting, the mean over seeds and the paired difference SSL-GAN - ConvNet on the
same test photographs with its 95% bootstrap interval; the summary says by how much each factor moves
that gap (the largest minus the smallest gap over its settings).

    python benchmarks/ssl_gan_factors.py [--seeds 0 1 2] [--work DIR] [--images 541] [--device cpu|cuda]
                                         [--parallel N] [--reuse LABEL_EFFICIENCY_WORK] [--report]

The data are benchmarks/label_efficiency.py's (``scarce``, seed 1234, 541 photographs of 768x510,
143 train / 50 val / 100 test). Each finished run appends a line to ``<work>/results.jsonl`` at
once; rerunning with the same ``--work`` skips finished runs. ``--reuse DIR`` takes the base setting's
runs (SSL-GAN as shipped, ConvNet at equal steps, 10 labels, 3 epochs, the configs' width) from a
finished ``benchmarks/label_efficiency.py --work DIR`` instead of fitting them again (the same
command lines), and its ``idrid-scarce-1`` data. ``--parallel N`` runs N fits at a time, each its own
process with its share of the CPU threads (as label_efficiency.py's). ``--report`` prints the table
of what has finished in ``--work`` so far (settings with a run missing say so) and fits nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import append_jsonl, machine, read_jsonl  # noqa: E402
from _fits import fit_and_test, paired_image_auroc, run_children, write_child_line  # noqa: E402

from retinalab.synthetic import write_synthetic  # noqa: E402

BASE = {"unsup_weight": 1.0, "width": 0.125, "epochs": 3}
#: factor -> the settings it takes (the others stay at BASE)
FACTORS = {"unsup_weight": [0.0, 0.1, 0.3, 1.0], "width": [0.125, 0.25, 0.5], "epochs": [3, 12]}
LABELS = 10


def settings() -> list[dict]:
    """Every SSL-GAN setting once (the base is shared by the three factors), cheapest first."""
    out = []
    for factor, values in FACTORS.items():
        for v in values:
            s = {**BASE, factor: v}
            if s not in out:
                out.append(s)
    return sorted(out, key=lambda s: (s["width"] ** 2 * s["epochs"], s["epochs"], -s["unsup_weight"]))


def tag(method: str, s: dict, seed: int) -> str:
    if method == "ConvNet":  # the ConvNet's counterpart depends on width and steps only
        return f"convnet-w{s['width']:g}-e{s['epochs']}-{seed}"
    return f"sslgan-u{s['unsup_weight']:g}-w{s['width']:g}-e{s['epochs']}-{seed}"


def run(method: str, s: dict, seed: int, root: Path, work: Path, a: argparse.Namespace) -> dict:
    extra = [f"--model.width={s['width']}"]
    if method == "SSL-GAN":
        extra += [
            f"--model.gen_width={s['width']}",
            f"--model.unsup_weight={s['unsup_weight']}",
            f"--model.lr_decay_start={max(1, int(s['epochs'] * 2 / 3))}",
        ]
        config = "conf/ssl_gan/synthetic.yaml"
    else:  # as many optimiser steps as the SSL-GAN's discriminator (an epoch = one pass over the unlabelled pool)
        extra += ["--data.batches_per_epoch=unlabeled"]
        config = "conf/convnet/synthetic.yaml"
    line = fit_and_test(config, root, LABELS, seed, work, tag(method, s, seed), s["epochs"], 50, 100, extra, a.device)
    line.update(method=method, setting=s, tag=tag(method, s, seed))
    return line


def reuse(src: Path, work: Path, seeds: list[int], done: dict, results: Path) -> None:
    """Copy the base setting's runs of a finished label_efficiency.py work folder (same data, same
    command lines) into this one's results."""
    base = BASE
    arms = {"SSL-GAN": "SSL-GAN", "ConvNet, equal steps": "ConvNet"}
    for line in read_jsonl(src / "results.jsonl"):
        method = arms.get(line.get("arm"))
        if (
            method is None
            or line.get("data") != "idrid-scarce-1"
            or line.get("labels") != LABELS
            or line.get("epochs") != base["epochs"]
            or line.get("width") is not None
            or line.get("seed") not in seeds
        ):
            continue
        name = tag(method, base, line["seed"])
        if name in done:
            continue
        (work / "predictions").mkdir(exist_ok=True)
        shutil.copyfile(src / line["predictions"], work / "predictions" / f"{name}.npz")
        new = {
            **line,
            "predictions": f"predictions/{name}.npz",
            "method": method,
            "setting": base,
            "tag": name,
            "reused_from": str(src),
        }
        append_jsonl(results, new)
        done[name] = new
        print(f"{name}: reused from {src}", flush=True)


def paired(gan: list[dict], conv: list[dict], work: Path) -> tuple[float, float, float]:
    """Mean image-AUROC difference SSL-GAN - ConvNet and its 95% paired bootstrap interval."""
    d = paired_image_auroc(gan, conv, work)
    assert d is not None, "the two runs scored other photographs"
    return d[:3]


def table(done: dict, seeds: list[int], work: Path) -> None:
    """The factor table and which factor moves the gap, from the finished runs in ``done``; a setting
    with a run missing (``--report`` while the benchmark runs, or a run stopped early) says so."""
    print(
        f"\nscarce preset, {LABELS} labelled photographs, seeds {seeds}; best-on-validation checkpoints; mean over "
        "seeds; "
        "gap = SSL-GAN - ConvNet image AUROC on the same test photographs [95% paired bootstrap interval]; "
        "diagnostics at the end of training\n"
    )
    print(
        "| factor | setting | steps | SSL-GAN image / patch AUROC | ConvNet image / patch AUROC | gap [95%] | D "
        "accuracy | p(fake) real / generated | loss_g |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    gaps: dict[str, dict] = {}

    def m(lines: list[dict], metric: str) -> float:
        return statistics.mean(ln["best"][metric] for ln in lines)

    def dg(lines: list[dict], key: str) -> float:
        return statistics.mean(ln["diagnostics"].get(f"gan/{key}", float("nan")) for ln in lines)

    for factor, values in FACTORS.items():
        for v in values:
            s = {**BASE, factor: v}
            names = [tag(method, s, seed) for seed in seeds for method in ("SSL-GAN", "ConvNet")]
            if any(n not in done for n in names):
                print(
                    f"| {factor} | {v:g} | not run: {sum(n in done for n in names)} of {len(names)} fits finished "
                    "|||||||"
                )
                continue
            gan = [done[tag("SSL-GAN", s, seed)] for seed in seeds]
            conv = [done[tag("ConvNet", s, seed)] for seed in seeds]
            gap, low, high = paired(gan, conv, work)
            gaps.setdefault(factor, {})[v] = gap
            print(
                f"| {factor} | {v:g} | {gan[0]['steps']} | {m(gan, 'image_auroc'):.3f} / {m(gan, 'patch_auroc'):.3f} | "
                f"{m(conv, 'image_auroc'):.3f} / {m(conv, 'patch_auroc'):.3f} | {gap:+.3f} [{low:+.2f}, {high:+.2f}] | "
                f"{dg(gan, 'd_accuracy'):.2f} | {dg(gan, 'p_fake_real'):.2f} / {dg(gan, 'p_fake_generated'):.2f} | "
                f"{dg(gan, 'loss_g'):.2f} |"
            )
    print("\nWhich factor moves the gap (largest minus smallest gap over its finished settings):")
    for factor, by in sorted(gaps.items(), key=lambda kv: -(max(kv[1].values()) - min(kv[1].values()))):
        best = max(by, key=by.get)
        missing = [v for v in FACTORS[factor] if v not in by]
        print(
            f"- {factor}: {max(by.values()) - min(by.values()):.3f} (gap from {min(by.values()):+.3f} to "
            f"{max(by.values()):+.3f}; "
            f"smallest deficit at {factor} = {best:g})"
            + (f"; not run: {', '.join(f'{v:g}' for v in missing)}" if missing else "")
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--images", type=int, default=541, help="photographs drawn (as benchmarks/label_efficiency.py)")
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
        "--parallel",
        type=int,
        default=None,
        metavar="N",
        help="N fits at a time, each its own process with cores/N threads",
    )
    ap.add_argument(
        "--reuse",
        default=None,
        metavar="DIR",
        help="a finished label_efficiency.py --work folder: take its base-setting runs and data",
    )
    ap.add_argument(
        "--report", action="store_true", help="print the table of the runs finished in --work so far, fit nothing"
    )
    ap.add_argument(
        "--one", default=None, help=argparse.SUPPRESS
    )  # method:tag, one fit in this process (--parallel's children)
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="retinalab-factors-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RETINALAB_CACHE", str(work / "cache"))
    print(f"machine: {machine()}")
    t0 = time.perf_counter()
    root = work / "idrid-scarce-1"  # benchmarks/label_efficiency.py's data folder name for this preset
    if a.one:  # a child of --parallel: one fit, its line written for the parent to collect
        method, name = a.one.split(":", 1)
        s, seed = next((s, seed) for s in settings() for seed in a.seeds if tag(method, s, seed) == name)
        line = run(method, s, seed, root, work, a)
        write_child_line(work, name, line)
        return
    if a.reuse and not root.exists() and (Path(a.reuse) / "idrid-scarce-1").is_dir():
        root.symlink_to((Path(a.reuse) / "idrid-scarce-1").resolve(), target_is_directory=True)
    if not root.exists():
        write_synthetic(
            "idrid", root, num_images=a.images, seed=1234, size=(768, 510), workers=os.cpu_count() or 1, preset="scarce"
        )
    results = work / "results.jsonl"
    done = {d["tag"]: d for d in read_jsonl(results)}
    plan = []
    for s in settings():
        for seed in a.seeds:
            for method in ("ConvNet", "SSL-GAN"):
                if tag(method, s, seed) not in [t for _, t, *_ in plan]:
                    plan.append((method, tag(method, s, seed), s, seed))
    if a.report:
        table(done, a.seeds, work)
        return
    if a.reuse:
        reuse(Path(a.reuse).resolve(), work, a.seeds, done, results)

    def record(method: str, name: str, line: dict) -> None:
        append_jsonl(results, line)  # one line per finished run, at once
        done[name] = line
        d = line["diagnostics"]
        diag = (
            (
                f", D acc {d.get('gan/d_accuracy', float('nan')):.2f}, p(fake) real "
                f"{d.get('gan/p_fake_real', float('nan')):.2f} "
                f"generated {d.get('gan/p_fake_generated', float('nan')):.2f}"
            )
            if method == "SSL-GAN"
            else ""
        )
        print(
            f"[{time.perf_counter() - t0:6.0f}s] {name}: {line['steps']} steps in {line['fit_s']:.0f} s, image AUROC "
            f"{line['best']['image_auroc']:.3f}, patch AUROC {line['best']['patch_auroc']:.3f}{diag}",
            flush=True,
        )

    todo = [(method, name, s, seed) for method, name, s, seed in plan if name not in done]
    if a.parallel is None:
        for method, name, s, seed in todo:
            record(method, name, run(method, s, seed, root, work, a))
    elif todo:
        # longest first: the width-0.5 SSL-GAN fits last ~10 min on 2 cores; started last, one would run alone
        # at the end
        todo.sort(key=lambda t: -(t[2]["width"] ** 2 * t[2]["epochs"] * (3 if t[0] == "SSL-GAN" else 1)))
        children = {
            name: [
                sys.executable,
                str(Path(__file__).resolve()),
                "--work",
                str(work),
                "--images",
                str(a.images),
                "--seeds",
                *map(str, a.seeds),
                "--one",
                f"{method}:{name}",
            ]
            + (["--device", a.device] if a.device else [])
            for method, name, _s, _seed in todo
        }
        methods = {name: method for method, name, _s, _seed in todo}
        run_children(children, work, a.parallel, a.device, lambda name, line: record(methods[name], name, line))
    missing = [name for _m, name, _s, _seed in plan if name not in done]
    if missing:
        raise SystemExit(f"{len(missing)} run(s) did not finish (see {work / 'runs'}/*/run.log): {missing[:5]}")

    table(done, a.seeds, work)
    print(f"\ntotal time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
