"""`retinalab sweep`: W&B sweep files run locally; the shipped ones are valid for `wandb sweep` too."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from retinalab.cli import main
from retinalab.experiments.sweep import assignments, load_sweep
from tests.helpers.paths import REPO


@pytest.mark.parametrize("path", sorted((REPO / "conf" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sweeps_are_wandb_format(path):
    cfg = load_sweep(path)
    raw = path.read_text()
    assert "  - ${env}" in raw and "  - ${interpreter}" in raw and "  - ${args}" in raw  # block-style command
    assert cfg["command"][2:4] == ["-m", "retinalab"] and cfg["metric"]["goal"] in ("maximize", "minimize")
    assert all("." in name for name in cfg["parameters"])  # LightningCLI names: model.lr, data.batch_size


def test_grid_and_random_assignments():
    grid = {
        "method": "grid",
        "command": ["${args}"],
        "parameters": {"model.a": {"values": [1, 2]}, "model.b": {"values": ["x", "y", "z"]}},
    }
    combos = assignments(grid, None)
    assert len(combos) == 6 and combos[0] == {"model.a": 1, "model.b": "x"} and len(assignments(grid, 4)) == 4
    rnd = {
        "method": "random",
        "command": ["${args}"],
        "parameters": {
            "model.lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-3},
            "model.k": {"min": 1, "max": 3},
        },
    }
    draws = assignments(rnd, 50, seed=3)
    assert all(1e-5 <= d["model.lr"] <= 1e-3 and d["model.k"] in (1, 2, 3) for d in draws)
    assert draws == assignments(rnd, 50, seed=3) and draws != assignments(rnd, 50, seed=4)


def test_bad_sweeps_are_named(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(
        yaml.safe_dump({"method": "bayes", "parameters": {"model.lr": {"values": [1]}}, "command": ["${args}"]})
    )
    with pytest.raises(ValueError, match="W&B server"):
        load_sweep(p)
    p.write_text(
        yaml.safe_dump({"method": "grid", "parameters": {"model.lr": {"min": 1, "max": 2}}, "command": ["${args}"]})
    )
    with pytest.raises(ValueError, match="needs `values`"):
        load_sweep(p)
    p.write_text(yaml.safe_dump({"method": "grid", "parameters": {"model.lr": {"values": [1]}}, "command": ["fit"]}))
    with pytest.raises(ValueError, match="args"):
        load_sweep(p)
    # without `method` W&B refuses the file: so does a local run, with values everywhere (once run as a
    # grid) or with a distribution (once blamed on the grid)
    for lr in ({"values": [1, 2]}, {"distribution": "uniform", "min": 1, "max": 2}):
        p.write_text(yaml.safe_dump({"parameters": {"model.lr": lr}, "command": ["${args}"]}))
        with pytest.raises(ValueError, match=r"a sweep needs `method` \(W&B sweep format\); locally use one of"):
            load_sweep(p)


# slow tier (make test-slow; CI runs it after make test): three fits with W&B, ~60 s
@pytest.mark.slow
def test_local_grid_sweep_runs_ranks_and_resumes(tmp_path, capsys, monkeypatch):
    """Runs that log to W&B (offline), as the shipped configs' do: each row holds the best value its run
    logged, and the winner is printed (before, only a CSVLogger's metrics.csv was read, so the shipped
    sweeps ranked nothing). A run stopped by SIGTERM inside epoch 1 (a preemption) is reported; the
    sweep run again resumes it from its last checkpoint in the same folder and W&B run, and its row's
    best value covers both pieces; a third call keeps the finished rows and trains nothing."""
    from retinalab.lightning.loggers import read_run_metrics
    from retinalab.lightning.loggers.wandb_offline import iter_records
    from retinalab.synthetic import write_synthetic

    syn = write_synthetic("idrid", tmp_path / "syn", 20, 2, (128, 96), 1.0, 1.0, 1)
    sweep = {
        "method": "grid",
        "metric": {"name": "val/patch_auroc", "goal": "maximize"},
        "parameters": {"model.width": {"values": [0.1, 0.15]}},
        "command": [
            "${env}",
            "${interpreter}",
            "-m",
            "retinalab",
            "fit",
            "--config",
            str(REPO / "tests/conf/convnet_tiny.yaml"),
            f"--data.root={syn}",
            f"--data.cache_dir={tmp_path / 'cache'}",
            "--trainer.enable_progress_bar=false",
            "--trainer.logger=retinalab.lightning.loggers.WandbLogger",
            "--trainer.max_epochs=2",
            "--trainer.callbacks+=retinalab.lightning.LatestCheckpoint",
            "--trainer.callbacks+=tests.helpers.ddp_helpers.SigtermAtBatch",
            "${args}",
        ],
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    args = ["sweep", str(path), "--out", str(tmp_path / "out")]
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("RETINALAB_TEST_SIGTERM_EPOCH", "1")
    monkeypatch.setenv("RETINALAB_TEST_SIGTERM_BATCH", "0")
    assert main([*args, "--count", "1"]) == 1  # the first run only, stopped inside epoch 1
    assert list(pd.read_csv(tmp_path / "out" / "sweep_runs.csv")["status"]) == ["exit 143"]
    monkeypatch.setenv("RETINALAB_TEST_SIGTERM_EPOCH", "-1")
    capsys.readouterr()
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "run 0: model.width=0.1 (resuming from its last checkpoint)" in text and text.count("resuming") == 1
    runs = pd.read_csv(tmp_path / "out" / "sweep_runs.csv")
    assert list(runs["model.width"]) == [0.1, 0.15] and list(runs["status"]) == ["ok", "ok"]
    logged = []
    for i in range(2):
        (version,) = (tmp_path / "out" / f"run_{i:03d}").glob("logs/version_*")  # one run folder each
        pieces = sorted(version.glob("wandb/offline-run-*"))
        assert len(pieces) == 2 - i  # run 0: the stopped piece and the resumed one
        if i == 0:  # the stopped piece was closed as preempted, with the command's exit code
            records = {r.WhichOneof("record_type"): r for r in iter_records(next(pieces[0].glob("run-*.wandb")))}
            assert "preempting" in records and records["exit"].exit.exit_code == 143
        history = read_run_metrics(version).dropna(subset=["val/patch_auroc"])
        assert history["epoch"].tolist() == [
            0,
            1,
        ]  # run 0: epoch 0 from the stopped piece, epoch 1 from the resumed one
        logged.append(history["val/patch_auroc"].max())
    assert list(runs["val/patch_auroc"]) == pytest.approx(logged)
    best = int(np.argmax(logged))
    assert (
        f"[sweep] best val/patch_auroc = {logged[best]:.4f}: run {runs['run'][best]} "
        f"model.width={runs['model.width'][best]}" in text
    )
    manifest = yaml.safe_load(next((tmp_path / "out" / "run_001").glob("logs/version_*/manifest.json")).read_text())
    assert manifest["config"]["model"]["init_args"]["width"] == 0.15
    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.count("finished before, kept") == 2 and f"best val/patch_auroc = {logged[best]:.4f}" in text
