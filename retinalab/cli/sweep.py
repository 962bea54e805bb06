"""``retinalab sweep``: run a W&B sweep file locally (grid / random)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..utils.errors import ArgumentParser

DESCRIPTION = "run a W&B sweep file locally (grid / random): retinalab sweep conf/sweeps/<name>.yaml --count N"


def main(argv: Sequence[str]) -> int:
    """``retinalab sweep``: see :mod:`retinalab.experiments.sweep`. Exit 1 when a run failed."""
    from ..experiments.sweep import run_sweep

    p = ArgumentParser(prog="retinalab sweep", description=DESCRIPTION)
    p.add_argument("sweep", help="W&B sweep file (conf/sweeps/*.yaml)")
    p.add_argument("--count", type=int, default=None, help="runs (grid: the first N combinations; random: N draws)")
    p.add_argument("--out", default=None, help="where the runs go (default runs/sweeps/<file stem>)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    a = p.parse_args(list(argv))
    out = a.out or str(Path("runs") / "sweeps" / Path(a.sweep).stem)
    rows = run_sweep(a.sweep, out, a.count, a.seed, a.dry_run)
    return 0 if all(r["status"] in ("ok", "dry-run") for r in rows) else 1
