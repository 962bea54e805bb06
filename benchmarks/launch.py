"""Starting a CPU job: a plain subprocess against retinalab.experiments.launch's fork server, side by side in one run.

Every job imports what a benchmark fit imports before its first step (``retinalab.lightning.cli``, Lightning,
torch) and does one small tensor operation; ``--jobs`` of them run ``--parallel`` at a time with one
thread each, as ``benchmarks/label_efficiency.py --parallel 2`` runs its fits, first as subprocesses
(``RETINALAB_FORK_SERVER=0``), then from the fork server (whose own start, importing the same packages
once, is timed apart), alternating ``--repeats`` times. Prints the seconds per job of each and their
ratio.

    python benchmarks/launch.py [--jobs 4] [--parallel 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import machine  # benchmarks/ is on sys.path when a script runs

JOB = "import retinalab.lightning.cli, pytorch_lightning, torch; torch.ones(2).sum()"


def batch(mode: str, n: int, parallel: int, folder: Path, tag: str) -> float:
    from retinalab.experiments.launch import Job, Slot, run_jobs

    os.environ["RETINALAB_FORK_SERVER"] = mode
    jobs = [Job(f"{tag}-{i}", [sys.executable, "-c", JOB], folder / f"{tag}-{i}.log") for i in range(n)]
    t = time.perf_counter()
    codes = run_jobs(jobs, [Slot(None, 1) for _ in range(parallel)], prefix="")
    if any(codes.values()):
        raise SystemExit(f"a job failed: {codes} (logs in {folder})")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    print(f"machine: {machine()}")
    folder = Path(tempfile.mkdtemp(prefix="retinalab-launch-"))
    first = batch("1", 1, 1, folder, "server-start")  # the fork server imports its packages once
    plain, forked = [], []
    for r in range(a.repeats):
        plain.append(batch("0", a.jobs, a.parallel, folder, f"plain{r}") / a.jobs)
        forked.append(batch("1", a.jobs, a.parallel, folder, f"forked{r}") / a.jobs)
    print(f"\n{a.jobs} jobs, {a.parallel} at a time, one thread each; best of {a.repeats}, wall seconds per job:")
    print(f"  plain subprocess:  {min(plain):.2f} s   (all: {', '.join(f'{x:.2f}' for x in plain)})")
    print(
        f"  from fork server:  {min(forked):.2f} s   (all: {', '.join(f'{x:.2f}' for x in forked)}; the server's "
        f"start: {first:.1f} s once)"
    )
    print(
        f"\nsubprocess / fork server: {min(plain) / min(forked):.1f}x; saved per job: {min(plain) - min(forked):.1f} s"
    )


if __name__ == "__main__":
    main()
