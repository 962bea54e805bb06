"""The verdicts of ``make gpu-check``'s paper-000 study (issue 19's target), from what it left behind.

* GPU busy: the mean of the ``nvidia-smi`` utilisation samples (one a second) taken while the parallel
  fits ran, from the first launch to the last exit (target >= 70%; the data synthesis and the cache
  build before them are left out).
* Speed-up: the parallel study's wall clock against the same fits run one at a time. Only one seed of
  the sequential reference runs (time is short on a lent GPU): each parallel fit is charged the solo
  time of the same method and label count, or of the same method when that count did not run alone.

    python benchmarks/gpu_check_report.py --parallel-work W1 --sequential-work W2 [--util gpu_util.csv]
                                          [--window START END]
"""

from __future__ import annotations

import argparse
import csv
import statistics
from datetime import datetime
from pathlib import Path

from _common import read_jsonl  # benchmarks/ is on sys.path when a script runs


def gpu_busy(util_csv: Path, window: tuple[float, float] | None = None) -> tuple[float, int] | None:
    """Mean GPU utilisation (%) of the samples inside ``window`` (unix seconds) and their count; ``None``
    without samples. Rows: ``timestamp, utilization.gpu, memory.used`` as nvidia-smi's csv,noheader,nounits."""
    if not util_csv.is_file():
        return None
    values = []
    for row in csv.reader(util_csv.open()):
        if len(row) < 2:
            continue
        try:
            util = float(row[1])
        except ValueError:
            continue
        if window is not None:
            try:  # nvidia-smi writes the machine's local time, as datetime reads it back
                t = datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
            except ValueError:
                t = None
            if t is not None and not window[0] <= t <= window[1] + 1:
                continue
        values.append(util)
    return (statistics.mean(values), len(values)) if values else None


def speedup(parallel: list[dict], wall_s: float, sequential: list[dict]) -> tuple[float, float] | None:
    """(estimated sequential seconds, speed-up) of ``parallel`` fits that took ``wall_s`` together,
    from the solo process times in ``sequential``; ``None`` when an arm never ran alone."""
    solo: dict[tuple, list[float]] = {}
    for ln in sequential:
        t = ln.get("process_s", ln.get("run_s"))
        solo.setdefault((ln["arm"], ln["labels"]), []).append(t)
        solo.setdefault((ln["arm"], "any"), []).append(t)
    total = 0.0
    for ln in parallel:
        times = solo.get((ln["arm"], ln["labels"])) or solo.get((ln["arm"], "any"))
        if not times:
            return None
        total += statistics.mean(times)
    return total, total / wall_s if wall_s > 0 else float("nan")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parallel-work", type=Path, required=True)
    ap.add_argument("--sequential-work", type=Path, required=True)
    ap.add_argument("--util", type=Path, default=None)
    ap.add_argument(
        "--window",
        type=float,
        nargs=2,
        default=None,
        metavar=("START", "END"),
        help="unix seconds of the parallel fits (default: the last block of parallel.jsonl)",
    )
    a = ap.parse_args(argv)
    out: dict = {}
    blocks = read_jsonl(a.parallel_work / "parallel.jsonl")
    fits = [ln for ln in read_jsonl(a.parallel_work / "results.jsonl") if "process_s" in ln]
    print("paper-000 GPU study (issue 19's targets):")
    if not blocks or not fits:
        print("- no parallel fit finished: nothing to judge")
        return out
    wall = blocks[-1]["wall_s"]
    print(
        f"- {len(fits)} fits finished with {blocks[-1]['processes']} processes of {blocks[-1]['threads']} CPU threads; "
        f"{wall:.0f} s wall clock{'; failed: ' + ', '.join(blocks[-1]['failed']) if blocks[-1]['failed'] else ''}"
    )
    est = speedup(fits, wall, read_jsonl(a.sequential_work / "results.jsonl"))
    if est is None:
        print("- speed-up: no sequential reference for every method (paper000_seq did not finish)")
    else:
        out["sequential_s"], out["speedup"] = est
        print(
            f"- speed-up: the same fits one at a time would take ~{est[0]:.0f} s (solo times of one seed) -> "
            f"{est[1]:.1f}x; target >= 4x -> {'met' if est[1] >= 4 else 'MISSED'}"
        )
    window = (
        tuple(a.window) if a.window else (blocks[-1]["start"], blocks[-1]["end"]) if "start" in blocks[-1] else None
    )
    busy = gpu_busy(a.util, window) if a.util else None
    if busy is None:
        print("- GPU busy: no nvidia-smi samples")
    else:
        out["gpu_busy"], out["samples"] = busy
        print(
            f"- GPU busy: {busy[0]:.0f}% on average over {busy[1]} one-second samples; target >= 70% -> "
            f"{'met' if busy[0] >= 70 else 'MISSED'}"
        )
    return out


if __name__ == "__main__":
    main()
