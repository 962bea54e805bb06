"""Quiet output (issue 49): third-party notices a user cannot act on are silenced at their source, and
``--verbose`` / ``RETINALAB_VERBOSE=1`` brings them back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers.cli import TINY

NOTICES = ("💡 Tip", "LeafSpec", "anonymous setting has no effect", "Run history:", "Run summary:")


def fit(tmp_path, *extra: str, env: dict[str, str] | None = None) -> str:
    """``retinalab fit`` of the tiny config with W&B offline, as a user runs it; its stdout and stderr."""
    from retinalab.synthetic import write_synthetic

    syn = tmp_path / "syn"
    if not syn.exists():
        write_synthetic("idrid", syn, 16, 5, (128, 96), workers=1)
    argv = [
        "fit",
        "--config",
        str(TINY),
        f"--data.root={syn}",
        f"--data.cache_dir={tmp_path / 'cache'}",
        "--trainer.logger=retinalab.lightning.WandbLogger",
        f"--trainer.logger.save_dir={tmp_path / 'wandb'}",
        "--trainer.logger.offline=true",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        *extra,
    ]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_QUIET", "RETINALAB_VERBOSE"))}
    res = subprocess.run(
        [sys.executable, "-m", "retinalab", *argv],
        cwd=tmp_path,
        env={**clean, "WANDB_MODE": "offline", "PYTHONWARNINGS": "default", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout + res.stderr


@pytest.mark.slow  # two fits in processes of their own
def test_a_fit_prints_no_third_party_notice_and_verbose_brings_them_back(tmp_path):
    quiet = fit(tmp_path)
    assert [n for n in NOTICES if n in quiet] == []
    assert "W&B run saved offline in " in quiet and "wandb sync " in quiet  # the one line a user needs from W&B
    loud = fit(tmp_path, "--verbose")
    assert "💡 Tip" in loud and "Run summary:" in loud


def test_the_filters_are_scoped_to_the_notices_they_name(monkeypatch):
    import logging
    import warnings

    from retinalab.utils import quiet

    monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet.quiet_third_party()
        # the LeafSpec notice from the module that issues it is dropped; the same words elsewhere are not
        warnings.warn_explicit(
            "`isinstance(treespec, LeafSpec)` is deprecated, use ...",
            FutureWarning,
            "_pytree.py",
            21,
            module="pytorch_lightning.utilities._pytree",
        )
        warnings.warn_explicit(
            "`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, "mine.py", 1, module="mine"
        )
        warnings.warn("a warning of the user's own", UserWarning, stacklevel=1)
    assert [str(w.message)[:24] for w in seen] == ["`isinstance(treespec, Le", "a warning of the user's "]
    tips = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    record = logging.LogRecord(tips.name, logging.INFO, "x", 1, "💡 Tip: try litlogger", None, None)
    other = logging.LogRecord(tips.name, logging.INFO, "x", 1, "GPU available: False", None, None)
    assert not tips.filter(record) and tips.filter(other)
    assert quiet.take_verbose_flag(["fit", "--verbose", "--config", "x"]) == ["fit", "--config", "x"]
    assert quiet.verbose()
    quiet.quiet_third_party()  # verbose: the tips come back
    assert tips.filter(record)
