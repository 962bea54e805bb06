"""Peak memory of every paper-001 training config, and the gradient accumulation that fits a budget.

Each config in ``conf/collaborative`` runs one training step and one validation step
(``--trainer.fast_dev_run=true``, data loading in the process) on a synthetic copy of the dataset
layout it reads, at the config's image size and networks, in a fresh process per measurement. The
peak is read in that process: resident memory (``ru_maxrss``: weights, Adam state, activations,
framework) and, on a GPU, ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``.

On the CPU the configs' full batches (32-128 photographs at 512 px) would take minutes a step and
more memory than a laptop has, so each config is measured at a few small per-step batches and the
peak is extrapolated linearly in the batch (weights and optimiser state are fixed, activations grow
with it): the fit's residual on the measured points is printed. A config's batch ``B`` with gradient
accumulation ``k`` (``--trainer.accumulate_grad_batches k`` in stage 1, ``--model.accumulate_grad_batches k``
in stage 2, each with ``--data.batch_size B/k``) holds ``B/k`` photographs' activations at a time.

    python benchmarks/memory.py [--batches 1 2 4] [--device cpu|cuda] [--precision 32-true|bf16-mixed]
                                [--configs idrid_stage1_seg ...] [--budget-gib 8 16 24] [--full]
                                [any `retinalab fit` argument, e.g. --data.image_size=64 for a smoke run]

``--full`` also measures each config's own batch (on a GPU: the default there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import append_jsonl, machine, read_jsonl  # noqa: E402

#: config -> (batch in the config, the layout its data.root reads, the one its image-level root reads in stage 2)
CONFIGS = {
    "idrid_stage1_seg": (32, "idrid", None),
    "idrid_stage1_grading": (128, "idrid", None),
    "idrid_stage2": (16, "idrid", "idrid"),
    "eyepacs_stage1_grading": (128, "eyepacs", None),
    "eyepacs_stage2": (16, "idrid", "eyepacs"),
}

# runs one `retinalab fit` in this process and prints its peak memory
PROBE = r"""
import json, resource, sys, torch
from retinalab.cli import main
rc = main(sys.argv[1:])
peak = {"rc": rc, "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
if torch.cuda.is_available():
    peak |= {
        "cuda_alloc_gib": torch.cuda.max_memory_allocated() / 2**30,
        "cuda_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
    }
print("PEAK " + json.dumps(peak), flush=True)
"""


def data_roots(work: Path) -> dict[str, Path]:
    """Synthetic IDRiD and EyePACS layouts, photographs large enough for 512 px (drawn once)."""
    from retinalab.synthetic import write_synthetic

    roots = {"idrid": work / "IDRiD", "eyepacs": work / "eyepacs"}
    for name, root in roots.items():
        if not root.is_dir():
            write_synthetic(name, root, 48, 0, (768, 510), 1.0, 1.0, os.cpu_count() or 1, True, "benchmark")
    return roots


def measure(config: str, batch: int, a: argparse.Namespace, roots: dict[str, Path], out: Path) -> dict:
    """Peak memory of one training + one validation step of ``config`` at per-step batch ``batch``."""
    _, root, image_level_root = CONFIGS[config]
    args = [
        "fit",
        "--config",
        str(REPO / "conf" / "collaborative" / f"{config}.yaml"),
        "--trainer.fast_dev_run=true",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={out}",
        f"--trainer.precision={a.precision}",
        f"--trainer.accelerator={'gpu' if a.device == 'cuda' else 'cpu'}",
        "--trainer.devices=1",
        f"--data.batch_size={batch}",
        "--data.num_workers=0",
        "--data.root",
        str(roots[root]),
    ]
    if image_level_root:
        args += ["--data.image_level_root", str(roots[image_level_root])]
    args += a.override
    env = dict(os.environ, WANDB_MODE="offline", PYTHONWARNINGS="ignore")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-1500:]
        raise SystemExit(f"{config} at batch {batch} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][5:]) | {"seconds": time.perf_counter() - start}


def available_gib() -> float:
    """Memory the system can still give (``MemAvailable``), in GiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def fit_line(points: dict[int, dict], key: str) -> tuple[float, float, float]:
    """Slope, intercept and largest deviation of the line through the measured ``key`` against the
    batch (all NaN with fewer than two points)."""
    if len(points) < 2:
        return float("nan"), float("nan"), float("nan")
    xs = np.array(sorted(points), float)
    ys = np.array([points[int(b)][key] for b in xs])
    slope, intercept = np.polyfit(xs, ys, 1)
    return float(slope), float(intercept), float(np.abs(slope * xs + intercept - ys).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4], help="per-step batches to measure")
    ap.add_argument("--full", action="store_true", help="also measure each config's own batch (default on a GPU)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", default="32-true", help="Lightning precision (the configs' default is 32-true)")
    ap.add_argument("--budget-gib", type=float, nargs="+", default=[8.0, 16.0, 24.0], help="memory budgets to plan for")
    ap.add_argument("--report-only", action="store_true", help="measure nothing: tabulate what --out holds")
    ap.add_argument("--work", default=None, help="folder for the synthetic data (default: a temporary one)")
    ap.add_argument("--out", default=None, help="append each measurement to this JSON-lines file as it is made")
    a, a.override = ap.parse_known_args()  # anything else goes to every `retinalab fit` (e.g. --data.image_size=64)
    full = a.full or a.device == "cuda"
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="retinalab-memory-"))
    roots = {} if a.report_only else data_roots(work)
    key = "cuda_reserved_gib" if a.device == "cuda" else "rss_gib"
    # measurements already in --out with the same settings are not repeated (a killed run resumes)
    done: dict[tuple[str, int], dict] = {}
    for r in read_jsonl(a.out) if a.out else []:
        if (r.get("device"), r.get("precision"), r.get("override", [])) == (a.device, a.precision, a.override):
            done[(r["config"], r["batch"])] = r
    rows = []
    for config in a.configs:
        batch_full = CONFIGS[config][0]
        sizes = sorted(set(a.batches + ([batch_full] if full else [])))
        if a.report_only:
            sizes = sorted(b for c, b in done if c == config)
        points = {}
        for b in sizes:
            if (config, b) in done:
                points[b] = done[(config, b)]
                print(f"{config} batch {b}: measured before ({a.out})", flush=True)
                continue
            slope, intercept, _ = fit_line(points, "rss_gib")
            guess = slope * b + intercept  # NaN before two points: never skipped
            if a.device == "cpu" and guess > 0.85 * available_gib():
                print(
                    f"{config} batch {b}: skipped, predicted {guess:.1f} GiB resident against {available_gib():.1f} "
                    "GiB available",
                    flush=True,
                )
                continue
            m = measure(config, b, a, roots, work / "runs" / f"{config}-b{b}")
            points[b] = m
            line = (
                f"{config} batch {b}: resident {m['rss_gib']:.2f} GiB"
                + (
                    f", CUDA allocated {m['cuda_alloc_gib']:.2f} / reserved {m['cuda_reserved_gib']:.2f} GiB"
                    if "cuda_alloc_gib" in m
                    else ""
                )
                + f" ({m['seconds']:.0f} s)"
            )
            print(line, flush=True)
            if a.out:
                append_jsonl(
                    Path(a.out),
                    {
                        "config": config,
                        "batch": b,
                        "device": a.device,
                        "precision": a.precision,
                        "override": a.override,
                        **m,
                    },
                )
        rows.append((config, batch_full, *fit_line(points, key), points))

    print(f"\nmachine: {machine()}")
    print(
        f"device {a.device}, precision {a.precision}; peak = "
        + ("CUDA memory reserved by the caching allocator" if a.device == "cuda" else "resident memory of the process")
        + "; one training + one validation step at the configs' 512 px, data loading in the process"
        + (f"; with {' '.join(a.override)}" if a.override else "")
        + "\n"
    )
    budgets = " | ".join(f"k for {b:g} GiB" for b in a.budget_gib)
    print(
        "| config | batch | measured (batch: GiB) | per photograph | fixed | max fit error | peak at the full batch | "
        f"{budgets} |"
    )
    print("|---|---|---|---|---|---|---|" + "---|" * len(a.budget_gib))
    for config, batch_full, slope, intercept, residual, points in rows:
        measured = ", ".join(f"{b}: {p[key]:.2f}" for b, p in sorted(points.items()))
        at_full = (
            points[batch_full][key] if batch_full in points else slope * batch_full + intercept
        )  # nan with one point
        fits = []
        for budget in a.budget_gib:
            k = next(
                (
                    k
                    for k in (1, 2, 4, 8, 16, 32, 64, 128)
                    if batch_full % k == 0 and slope * (batch_full // k) + intercept <= budget
                ),
                None,
            )
            fits.append("-" if slope != slope else f"{k} (batch {batch_full // k})" if k else "does not fit")
        label = "measured" if batch_full in points else "extrapolated"
        print(
            f"| {config} | {batch_full} | {measured} | {slope:.3f} | {intercept:.2f} | {residual:.2f} | {at_full:.1f} "
            f"({label}) | " + " | ".join(fits) + " |"
        )
    print(
        "\nk: gradient accumulation keeping the config's batch (stage 1: --trainer.accumulate_grad_batches k; stage 2: "
        "--model.accumulate_grad_batches k; both with --data.batch_size batch/k)"
    )


if __name__ == "__main__":
    main()
