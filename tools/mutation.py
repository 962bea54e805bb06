"""Mutation testing of the modules whose arithmetic is the papers' (``make mutation``; not in CI).

For each target below, mutmut (https://github.com/boxed/mutmut) changes one thing at a time in the
named functions (an operator, a constant, an argument, a condition...) and runs the tests that call
them; a mutant the tests do not fail "survived". The kill rate is killed / (killed + survived); the
issue-20 target is >= 80% per module. Equivalent mutants (changes that cannot alter the result, such as
``zip(..., strict=True)`` -> ``strict=False`` on equal lengths) survive by nature and are listed with
their diffs in the report for a person to judge.

Each target runs in its own workspace (``.mutation/<name>/``: a copy of ``retinalab/`` and ``tests/``
with a ``[tool.mutmut]`` section), so targets can use different tests; mutmut keeps its results there,
so an interrupted run resumes and a rerun only retests what changed. PyTorch's thread pools do not
survive mutmut's fork per mutant (the children deadlock and would be counted as "timeouts", i.e.
killed), so every run uses one thread (``OMP_NUM_THREADS=1``).

    python tools/mutation.py [--only egl selection] [--report docs/mutation.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Target:
    name: str
    module: str  # file under retinalab/
    functions: tuple[str, ...]  # mutmut names of what to mutate ("x_<function>" or "xǁ<Class>ǁ<method>"), globs allowed
    tests: tuple[str, ...]


TARGETS = (
    Target(
        "selection",
        "retinalab/active/selection.py",
        ("*",),
        ("tests/active/test_selection.py", "tests/active/test_image_selection.py"),
    ),
    Target("egl", "retinalab/active/egl.py", ("*",), ("tests/active/test_egl.py",)),
    # the losses live in their own module: mutmut's trampolines hide __init__'s arguments from Lightning's
    # save_hyperparameters, so a LightningModule's file cannot be mutated
    Target("ssgan_losses", "retinalab/tasks/ssgan_losses.py", ("*",), ("tests/tasks/test_ssgan.py",)),
    Target(
        "image_level",
        "retinalab/metrics/image_level.py",
        ("*",),
        ("tests/models/test_models_metrics.py", "tests/metrics/test_bootstrap.py"),
    ),
    Target(
        "lesion_metrics",
        "retinalab/metrics/lesions.py",
        ("*",),
        ("tests/metrics/test_lesion_metrics.py", "tests/models/test_models_metrics.py"),
    ),
    Target(
        "focal_attention",
        "retinalab/models/lesion_attention.py",
        ("x_focal_loss*", "*LesionAttentionGrader*", "*BranchBatchNorm2d*"),
        ("tests/models/test_collaborative_models.py",),
    ),
)


def workspace(t: Target, base: Path) -> Path:
    """``base/<name>``: the sources and tests as they are now, and mutmut's config for ``t``."""
    ws = base / t.name
    ws.mkdir(parents=True, exist_ok=True)
    for folder in ("retinalab", "tests"):
        shutil.copytree(
            ROOT / folder, ws / folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    project = (ROOT / "pyproject.toml").read_text()
    project += (
        "\n[tool.mutmut]\n"
        'source_paths = ["retinalab/"]\n'
        f"only_mutate = {json.dumps([t.module])}\n"
        f"pytest_add_cli_args_test_selection = {json.dumps(list(t.tests))}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]\n'
    )
    (ws / "pyproject.toml").write_text(project)
    return ws


def run(t: Target, base: Path, mutmut: str) -> dict:
    ws = workspace(t, base)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    prefix = t.module.removesuffix(".py").replace("/", ".")
    names = [f"{prefix}.{f}" for f in t.functions]
    start = time.perf_counter()
    with (ws / "mutmut.log").open("w") as log:
        subprocess.run([mutmut, "run", *names], cwd=ws, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    out = subprocess.run(
        [mutmut, "results", "--all", "true"], cwd=ws, env=env, capture_output=True, text=True, check=False
    ).stdout
    status: dict[str, str] = {}
    for line in out.splitlines():
        name, _, state = line.strip().rpartition(": ")
        if name.startswith(prefix + ".") and any(_match(name, n) for n in names):
            status[name] = state
    counts = {s: sum(v == s for v in status.values()) for s in sorted(set(status.values()))}
    survivors = {}
    for name, state in status.items():
        if state in ("survived", "no tests"):
            diff = subprocess.run(
                [mutmut, "show", name], cwd=ws, env=env, capture_output=True, text=True, check=False
            ).stdout
            survivors[name] = [
                ln
                for ln in diff.splitlines()
                if ln.startswith(("-    ", "+    ", "- ", "+ ")) and not ln.startswith(("---", "+++"))
            ]
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    decided = killed + counts.get("survived", 0) + counts.get("no tests", 0)
    return {
        "name": t.name,
        "module": t.module,
        "functions": list(t.functions),
        "tests": list(t.tests),
        "counts": counts,
        "kill_rate": killed / decided if decided else float("nan"),
        "survivors": survivors,
        "seconds": seconds,
    }


def _match(name: str, pattern: str) -> bool:
    from fnmatch import fnmatchcase

    return fnmatchcase(name, pattern)


def report(results: list[dict]) -> str:
    lines = [
        "| module | functions | mutants | killed | survived | kill rate | target >= 80% | time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r["counts"]
        total = sum(c.values())
        rate = r["kill_rate"]
        lines.append(
            f"| `{r['module']}` | {', '.join(r['functions'])} | {total} | {c.get('killed', 0) + c.get('timeout', 0)} | "
            f"{c.get('survived', 0) + c.get('no tests', 0)} | {rate:.0%} | {'met' if rate >= 0.8 else 'MISSED'} | "
            f"{r['seconds'] / 60:.1f} min |"
        )
    for r in results:
        if r["survivors"]:
            lines += ["", f"Survivors in `{r['module']}` ({len(r['survivors'])}):", ""]
            for name, diff in r["survivors"].items():
                lines.append(f"* `{name.rsplit('.', 1)[1]}`: " + " / ".join(f"`{d.strip()}`" for d in diff[:4]))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=[t.name for t in TARGETS], help="targets to run (default: all)")
    ap.add_argument("--work", default=str(ROOT / ".mutation"), help="workspaces (kept: reruns resume)")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    mutmut = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or shutil.which("mutmut")
    if mutmut is None:
        sys.exit("mutation: mutmut is not installed (make mutation installs it: pip install mutmut)")
    results = []
    for t in TARGETS:
        if a.only and t.name not in a.only:
            continue
        print(f"mutation: {t.name} ({t.module})", flush=True)
        results.append(run(t, Path(a.work), mutmut))
        r = results[-1]
        print(f"  {r['counts']} kill rate {r['kill_rate']:.0%} in {r['seconds'] / 60:.1f} min", flush=True)
        if a.json:  # after every target: a long run stopped half-way keeps what it measured
            Path(a.json).write_text(json.dumps(results, indent=1))
    print()
    print(report(results))


if __name__ == "__main__":
    main()
