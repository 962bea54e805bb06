"""`retinalab` run as users run it, in a process of its own, on a small synthetic IDRiD-layout set."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers.paths import REPO

TINY = REPO / "tests" / "conf" / "convnet_tiny.yaml"


def run(args, cwd, env_extra=None, check=True):
    env = {**os.environ, "RETINALAB_CACHE": str(cwd / "cache"), "WANDB_MODE": "offline", **(env_extra or {})}
    res = subprocess.run(
        [sys.executable, "-m", "retinalab", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    if check and res.returncode != 0:
        raise AssertionError(
            f"retinalab {' '.join(args)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
        )
    return res


@pytest.fixture(scope="module")
def synth_idrid(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cli")
    run(
        ["synth", "idrid", "--out", "syn", "--num-images", "30", "--seed", "3", "--size", "128x96", "--workers", "1"],
        cwd,
    )
    return cwd
