"""The benchmark command lines parse: `make bench`'s arguments (BENCH_ARGS in benchmarks/_report.py)
and every benchmark that `make gpu-check` (benchmarks/gpu_check.sh) starts, so that a renamed flag
fails here, not minutes into a rare GPU session or a 30-minute `make bench`."""

from __future__ import annotations

import argparse
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import REPO

BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import _report  # noqa: E402


class _Parsed(Exception):
    def __init__(self, ns: argparse.Namespace) -> None:
        super().__init__()
        self.ns = ns


def parse(script: str, args: list[str], monkeypatch) -> argparse.Namespace:
    """``benchmarks/<script>``'s own ``main()``, stopped right after it parses ``args``; a bad
    argument makes argparse exit with status 2, as the script would."""
    plain, known = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
    inside = []  # parse_args calls parse_known_args, then refuses what is left over

    def parse_args(self, *a, **k):
        inside.append(1)
        try:
            ns = plain(self, *a, **k)
        finally:
            inside.pop()
        raise _Parsed(ns)

    def parse_known_args(self, *a, **k):
        got = known(self, *a, **k)
        if inside:
            return got
        raise _Parsed(got[0])

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", parse_args)
        m.setattr(argparse.ArgumentParser, "parse_known_args", parse_known_args)
        m.setattr(sys, "argv", [str(BENCH / script), *args])
        module = runpy.run_path(str(BENCH / script), run_name="bench_args")  # defines main() without running it
        with pytest.raises(_Parsed) as got:
            module["main"]()
    return got.value.ns


@pytest.mark.parametrize("script", sorted(_report.BENCH_ARGS))
def test_make_bench_arguments_parse(script, monkeypatch):
    assert (BENCH / script).is_file()
    parse(script, _report.BENCH_ARGS[script], monkeypatch)


def test_gpu_check_benchmark_command_lines_parse(tmp_path, monkeypatch):
    """gpu_check.sh run with a stand-in python that only records its command lines (as on the
    device: `--device cuda`, every step); each benchmark script's line parses with that script."""
    log = tmp_path / "calls"
    fake = tmp_path / "python"
    fake.write_text(
        f'#!/bin/bash\nprintf "%s\\0" "$@" >> {log}\nprintf "\\n" >> {log}\ncat > /dev/null <&- 2>/dev/null; exit 0\n'
    )
    fake.chmod(0o755)
    env = {
        **os.environ,
        "PYTHON": str(fake),
        "GPU_CHECK_OUT": str(tmp_path / "out"),
        "GPU_CHECK_WORK": str(tmp_path / "work"),
        "GPU_CHECK_DEVICE": "cuda",
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
    }
    (tmp_path / "bin").mkdir()  # no nvidia-smi: the sampler is skipped
    res = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    calls = [line.split("\0") for line in log.read_text().split("\0\n") if line]
    scripts = [c for c in calls if c and c[0].startswith("benchmarks/")]
    names = [Path(c[0]).name for c in scripts]
    assert {
        "egl.py",
        "inference.py",
        "label_efficiency.py",
        "collaborative.py",
        "memory.py",
        "gpu_check_report.py",
    } <= set(names), names
    for call in scripts:
        ns = parse(Path(call[0]).name, call[1:], monkeypatch)
        if "--device" in call:
            assert ns.device == "cuda", call
