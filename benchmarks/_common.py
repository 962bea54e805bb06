"""Helpers shared by the benchmark scripts (not a benchmark: ``make bench`` skips files starting with _)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def machine() -> str:
    """One line naming the machine: CPU, cores, accelerator, torch version."""
    import torch

    from retinalab.utils.machine import cpu_name

    cpu = cpu_name()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {cores} cores, {gpu}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"


def append_jsonl(path: Path, row: dict) -> None:
    """Append one JSON line with a single write, flushed to disk: a kill leaves whole lines only
    (at worst the last one cut short, which :func:`read_jsonl` skips)."""
    import json

    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines results file (none if it does not exist), skipping blank lines and a
    line a kill cut short."""
    import json

    rows = []
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
