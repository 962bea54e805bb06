"""``make bench``: run every benchmark script in this folder and write ``benchmarks/RESULTS.md``.

Each ``benchmarks/<name>.py`` (files starting with ``_`` are helpers) runs in its own process with the
arguments below, sized so the whole run fits in about two and a half hours on a 2-core CPU; a script not listed runs
with its defaults. Its output streams to the console as it runs; its standard output (the figures) goes
verbatim into its section of RESULTS.md, with the command, the machine and the wall time. RESULTS.md is replaced
atomically at the end, also when a script failed (its section then holds the error), and the exit status is non-zero.
Longer runs (more seeds, epochs, images) and their readings are in docs/benchmarks.md.

    python benchmarks/_report.py [--only egl scale [--update]] [--out benchmarks/RESULTS.md]

``--update`` replaces only the sections of the scripts run, keeping the others of the existing file
(its header then names the scripts rerun and when).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine  # noqa: E402

from retinalab.utils.io import write_text_atomic  # noqa: E402

# script -> arguments for `make bench` (defaults of the scripts are their full-size settings)
BENCH_ARGS: dict[str, list[str]] = {
    "patch_cache.py": ["--images", "8"],
    "lightning_overhead.py": ["--steps", "12", "--repeats", "2"],
    "memory_format.py": ["--steps", "6", "--repeats", "2"],
    "launch.py": [],  # 4 import-only jobs as subprocesses and from the fork server, twice each (~1 min)
    "egl.py": [],
    "inference.py": ["--seconds", "1.5"],
    # active_learning.py, its defaults: 5 strategies x 5 seeds, Algorithms 1 and 2 on the balanced and the grid pool,
    # ~25 min (the initial model on the dihedral variants, trained once per seed; margin under Algorithm 1 as
    # entropy's run)
    "active_learning.py": [],
    "collaborative.py": [
        "--quick"
    ],  # budget 1, the three arms of Table 1, 3 seeds, ~20 min (full: 3 budgets, the oracle and the fixes: hours)
    "memory.py": [],  # its defaults: 5 configs x 3 small batches at 512 px
    # two fits at a time, one thread each (as measured in docs/benchmarks.md; without --parallel they run one by one)
    "label_efficiency.py": ["--parallel", "2"],  # its defaults: scarce and benchmark presets, 3 seeds, 4 arms + ceiling
    "ssl_gan_factors.py": ["--parallel", "2"],  # its defaults: scarce, 10 labels, 3 seeds, 7 SSL-GAN settings
    # one seed to 1,104 steps (~15 min); its defaults (2 seeds to 6,072 steps) take hours on 2 cores
    "ssl_gan_budget.py": [
        "--parallel",
        "2",
        "--seeds",
        "0",
        "--epochs",
        "12",
        "--budgets",
        "3",
        "12",
        "--val-every",
        "3",
    ],
    "scale.py": [],
}


def _title(path: Path) -> str:
    import ast

    doc = ast.get_docstring(ast.parse(path.read_text())) or path.stem
    return doc.strip().splitlines()[0].rstrip(".")


def run(path: Path, args: list[str]) -> tuple[int, str, str, float]:
    """Run one script: its stdout (the figures) and stderr (warnings, progress bars) stream to the
    console; returns (exit status, stdout, last 60 lines of stderr, seconds)."""
    import threading
    from collections import deque

    cmd = [sys.executable, str(path), *args]
    start = time.perf_counter()
    out: list[str] = []
    err: deque[str] = deque(maxlen=60)
    with subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None

        def pump_err() -> None:
            for line in proc.stderr:
                sys.stderr.write(line)
                err.append(line)

        th = threading.Thread(target=pump_err, daemon=True)
        th.start()
        for line in proc.stdout:
            print(line, end="", flush=True)
            out.append(line)
        th.join()
    return proc.returncode, "".join(out), "".join(err), time.perf_counter() - start


def _merge(old: str, sections: list[str], scripts: list[Path], seconds: float) -> tuple[str, list[str]]:
    """The existing report with the sections of ``scripts`` replaced (or added), sorted by script."""
    # a section starts at a "## " line outside a fenced block: a script's output (inside ```) has its own
    # "## " headings, which belong to its section
    starts, fenced = [], False
    lines = old.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        elif line.startswith("## ") and not fenced:
            starts.append(i)
    head = "".join(lines[: starts[0]]) if starts else old
    kept = {}
    for a, b in zip(starts, [*starts[1:], len(lines)], strict=True):
        chunk = "".join(lines[a:b])
        name = chunk[chunk.find("(`benchmarks/") + 13 : chunk.find(".py`)")]
        kept[name] = chunk.rstrip("\n") + "\n"
    for path, section in zip(scripts, sections, strict=True):
        kept[path.stem] = section
    names = " ".join(p.stem for p in scripts)
    head = head.rstrip("\n") + (
        f"\n\nSections rerun since: {names}, by `python benchmarks/_report.py --only {names} --update` "
        f"in {seconds / 60:.1f} minutes on {machine()}.\n\n"
    )
    return head, [kept[k] for k in sorted(kept)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", help="script names (without .py) to run; RESULTS.md then holds only these")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument(
        "--update", action="store_true", help="with --only: replace just those sections of an existing --out"
    )
    a = ap.parse_args()
    if a.update and not (a.only and a.out.is_file()):
        ap.error("--update needs --only and an existing --out file")
    scripts = sorted(p for p in HERE.glob("*.py") if not p.name.startswith("_"))
    if a.only:
        unknown = set(a.only) - {p.stem for p in scripts}
        if unknown:
            ap.error(f"no benchmark named {sorted(unknown)}; have {[p.stem for p in scripts]}")
        scripts = [p for p in scripts if p.stem in a.only]
    sections, failed, total = [], [], time.perf_counter()
    for path in scripts:
        args = BENCH_ARGS.get(path.name, [])
        command = " ".join(["python", f"benchmarks/{path.name}", *args])
        print(f"== {command}", flush=True)
        code, output, errors, seconds = run(path, args)
        status = f"{seconds:.0f} s" if code == 0 else f"FAILED (exit {code}) after {seconds:.0f} s"
        section = (
            f"## {_title(path)} (`benchmarks/{path.name}`)\n\n"
            f"Command: `{command}` ({status})\n\n```\n{output.rstrip()}\n```\n"
        )
        if code != 0:
            failed.append(path.name)
            section += f"\nLast lines of its error output:\n\n```\n{errors.rstrip()}\n```\n"
        sections.append(section)
    total = time.perf_counter() - total
    written_by = (
        f"`python benchmarks/_report.py --only {' '.join(a.only)}`"
        if a.only
        else "`make bench` (every script in benchmarks/)"
    )
    head = (
        "# Benchmark results\n\n"
        "Written by "
        f"{written_by} "
        f"in {total / 60:.1f} minutes on: {machine()}.\n\n"
        "Each section is one script's output, verbatim; ratios in it were measured side by side in that run. The\n"
        "arguments are sized for a 2-core CPU (see `BENCH_ARGS` in `benchmarks/_report.py`); longer runs and the\n"
        "readings of all results are in [docs/benchmarks.md](../docs/benchmarks.md).\n\n"
    )
    if a.update:
        head, sections = _merge(a.out.read_text(), sections, scripts, total)
    if failed:
        head += f"**Failed: {', '.join(failed)}.**\n\n"
    write_text_atomic(a.out, head + "\n".join(sections))
    print(f"\nwrote {a.out} ({total / 60:.1f} minutes{'; failed: ' + ', '.join(failed) if failed else ''})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
