"""`retinalab` run as users run it, in a process of its own, on a small synthetic IDRiD-layout set."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers.paths import REPO

TINY = REPO / "tests" / "conf" / "convnet_tiny.yaml"
#: the demo's fits at a test's size: 128 px, 4 labelled images, one epoch, no logger
DEMO_TINY = [
    "--trainer.max_epochs=1",
    "--data.image_size=128",
    "--data.patch_size=32",
    "--data.stride=32",
    "--model.width=0.1",
    "--data.cache_workers=0",
    "--data.num_labeled_images=4",
    "--data.val_size=3",
    "--data.test_size=6",
    "--trainer.enable_progress_bar=false",
    "--trainer.logger=false",
]


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


def fit_refused(root, tmp_path, *flags: str) -> str:
    """``retinalab fit`` of a tiny patch run on ``root`` with ``flags``, which must be refused (exit 2) before
    anything is written; its one line."""
    import contextlib
    import io

    from retinalab.cli import main

    runs = tmp_path / "refused"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(
            [
                "fit",
                "--config",
                str(REPO / "tests" / "conf" / "convnet_tiny.yaml"),
                f"--data.root={root}",
                f"--data.cache_dir={tmp_path / 'cache'}",
                f"--trainer.default_root_dir={runs}",
                "--trainer.logger=false",
                *flags,
            ]
        )
    lines = [line for line in err.getvalue().splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and not runs.exists(), err.getvalue()[-2000:]
    return lines[0]
