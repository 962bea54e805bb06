"""`make gpu-check` (benchmarks/gpu_check.sh) and its report: what can be checked without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from tests.helpers.paths import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check_report  # noqa: E402


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_report_judges_speed_up_and_gpu_use(tmp_path, capsys):
    par, seq = tmp_path / "par", tmp_path / "seq"
    fits = [{"arm": "SSL-GAN", "labels": n, "seed": s, "process_s": 50.0} for n in (10, 40) for s in (0, 1, 2)]
    fits += [
        {"arm": "ConvNet, all labelled (ceiling)", "labels": None, "seed": s, "process_s": 30.0} for s in (0, 1, 2)
    ]
    _jsonl(
        par / "results.jsonl", [*fits, {"arm": "SSL-GAN", "labels": 10, "seed": 9, "run_s": 1.0}]
    )  # a sequential line: not counted
    _jsonl(par / "parallel.jsonl", [{"fits": 9, "processes": 6, "threads": 2, "wall_s": 60.0, "failed": []}])
    # solo: the SSL-GAN at 10 labels took 20 s, the ceiling 10 s; 40 labels did not run alone -> the method's mean
    _jsonl(
        seq / "results.jsonl",
        [
            {"arm": "SSL-GAN", "labels": 10, "seed": 0, "process_s": 20.0},
            {"arm": "ConvNet, all labelled (ceiling)", "labels": None, "seed": 0, "process_s": 10.0},
        ],
    )
    start = 1796032800.0
    stamp = lambda t: datetime.fromtimestamp(t).strftime("%Y/%m/%d %H:%M:%S.000")  # noqa: E731 - nvidia-smi: local time
    util = tmp_path / "gpu_util.csv"
    util.write_text(
        f"{stamp(start - 30)}, 0, 10\n{stamp(start)}, 90, 1000\n{stamp(start + 1)}, 60, 1000\n{stamp(start + 2)}, 75, "
        "1000\n"
        f"{stamp(start + 300)}, 0, 10\n"
    )
    # the window of the parallel fits comes from parallel.jsonl
    _jsonl(
        par / "parallel.jsonl",
        [{"fits": 9, "processes": 6, "threads": 2, "wall_s": 60.0, "failed": [], "start": start, "end": start + 10}],
    )
    out = gpu_check_report.main(["--parallel-work", str(par), "--sequential-work", str(seq), "--util", str(util)])
    assert out["sequential_s"] == pytest.approx(6 * 20 + 3 * 10) and out["speedup"] == pytest.approx(150 / 60)
    assert (
        out["gpu_busy"] == pytest.approx(75) and out["samples"] == 3
    )  # the samples before and after the window are left out
    text = capsys.readouterr().out
    assert (
        "2.5x; target >= 4x -> MISSED" in text
        and "75% on average over 3 one-second samples; target >= 70% -> met" in text
    )


def test_the_report_says_when_nothing_finished(tmp_path, capsys):
    assert (
        gpu_check_report.main(["--parallel-work", str(tmp_path / "a"), "--sequential-work", str(tmp_path / "b")]) == {}
    )
    assert "no parallel fit finished" in capsys.readouterr().out


# slow tier (make test-slow; CI runs it after make test)
@pytest.mark.slow
def test_without_a_gpu_the_script_says_so_and_writes_its_summary(tmp_path):
    env = {
        **os.environ,
        "GPU_CHECK_OUT": str(tmp_path / "out"),
        "GPU_CHECK_DEVICE": "cuda",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHON": sys.executable,
    }
    res = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert res.returncode == 3 and "no CUDA device visible" in summary and "torch " in summary
    assert "GPU: none" in summary


@pytest.mark.slow
def test_the_script_runs_the_paper_000_study_on_the_cpu(tmp_path):
    """The whole paper-000 step at a toy size on the CPU (GPU_CHECK_DEVICE=cpu): the parallel study,
    the sequential reference and the report."""
    env = {
        **os.environ,
        "GPU_CHECK_OUT": str(tmp_path / "out"),
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_STEPS": "paper000",
        "GPU_CHECK_WORK": str(tmp_path / "work"),
        "PYTHON": sys.executable,
        "P000_PARALLEL": "2",
        "P000_EPOCHS": "1",
        "P000_WIDTH": "0.125",
        "P000_IMAGES": "40",
        "P000_SEEDS": "0",
        "P000_LABELS": "4",
        "P000_EXTRA": "--val 4 --test 8",
    }
    res = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "== paper000 " in summary and "exit 0" in summary and "speed-up:" in summary
    assert "SSL-GAN" in (tmp_path / "out" / "paper000.txt").read_text()
