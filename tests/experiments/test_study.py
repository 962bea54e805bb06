"""`retinalab study`: the grid, shared splits, failure isolation, resumption and the results table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from retinalab.cli import main
from retinalab.experiments.study import Study
from tests.helpers.paths import REPO


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    from retinalab.synthetic import write_synthetic

    return write_synthetic("idrid", tmp_path_factory.mktemp("study") / "syn", 24, 7, (128, 96), 1.0, 1.0, 1)


def _config(tmp_path: Path, syn: Path, **extra) -> Path:
    cfg = {
        "name": "tiny",
        "out_dir": str(tmp_path / "study"),
        "methods": {
            "convnet": str(REPO / "tests/conf/convnet_tiny.yaml"),
            "ssl_gan": str(REPO / "tests/conf/ssl_gan_tiny.yaml"),
        },
        "labelled": [2, 4],
        "seeds": [0],
        "metrics": ["test/image_auroc", "test/patch_auroc"],
        "overrides": [
            f"--data.root={syn}",
            f"--data.cache_dir={tmp_path / 'cache'}",
            "--trainer.enable_progress_bar=false",
        ],
        **extra,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_study_runs_the_grid_on_shared_splits_and_resumes(syn, tmp_path, capsys):
    cfg = _config(tmp_path, syn, method_overrides={"ssl_gan": ["--model.width=0.1"]})
    assert main(["study", "--config", str(cfg)]) == 0
    out = tmp_path / "study"
    cells = {
        p.parent.relative_to(out / "cells").as_posix(): json.loads(p.read_text())
        for p in out.glob("cells/*/*/cell.json")
    }
    assert set(cells) == {"convnet/n2_s0", "convnet/n4_s0", "ssl_gan/n2_s0", "ssl_gan/n4_s0"}
    # same split and same labelled images for both methods at a count and seed; nested across counts
    for n in (2, 4):
        a, b = (json.loads((out / "cells" / m / f"n{n}_s0" / "split.json").read_text()) for m in ("convnet", "ssl_gan"))
        assert a["hash"] == b["hash"] and a["labeled"] == b["labeled"] and len(a["labeled"]) == n
    two = json.loads((out / "cells/convnet/n2_s0/split.json").read_text())["labeled"]
    four = json.loads((out / "cells/convnet/n4_s0/split.json").read_text())["labeled"]
    assert set(two) <= set(four)
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 4 and {"test/image_auroc", "test/patch_auroc", "test_last/image_auroc"} <= set(
        results.columns
    )
    # the tiny configs monitor no checkpoint: "best" is the final weights, so both tests agree
    m = cells["convnet/n2_s0"]["metrics"]
    assert m["test_last/patch_auroc"] == m["test/patch_auroc"] and m["test/loss"] == m["test_last/loss"]
    md = (out / "results.md").read_text()
    assert "| convnet |" in md and "| ssl_gan |" in md and "4 of 4 cells finished" in md
    assert (out / "test_image_auroc.png").is_file()
    # resumption: finished cells are skipped; a removed result is recomputed alone
    (out / "cells/ssl_gan/n4_s0/cell.json").unlink()
    capsys.readouterr()
    assert main(["study", "--config", str(cfg)]) == 0
    text = capsys.readouterr().out
    assert "1 cell(s) run, 0 failed, 3 already done" in text and (out / "cells/ssl_gan/n4_s0/cell.json").is_file()


def test_the_all_labelled_column_runs_for_the_ssl_gan(syn, tmp_path):
    """Paper 000's 149/149 column: every training image labelled, and the SSL-GAN's unlabelled
    stream is still every training image (labels hidden), so the cell runs instead of failing."""
    cfg = _config(tmp_path, syn, labelled=["all"], methods={"ssl_gan": str(REPO / "tests/conf/ssl_gan_tiny.yaml")})
    assert main(["study", "--config", str(cfg)]) == 0
    cell_dir = tmp_path / "study" / "cells" / "ssl_gan" / "nall_s0"
    split = json.loads((cell_dir / "split.json").read_text())
    assert split["labeled"] == split["train"] == split["unlabeled"] and split["unlabeled_pool"] == "all"
    metrics = json.loads((cell_dir / "cell.json").read_text())["metrics"]
    assert {"test/image_auroc", "test_last/image_auroc"} <= set(metrics)


def test_a_failing_cell_is_reported_and_does_not_stop_the_others(syn, tmp_path, capsys):
    cfg = _config(tmp_path, syn, labelled=[2], method_overrides={"ssl_gan": ["--data.patch_size=1000"]})
    assert main(["study", "--config", str(cfg)]) == 1
    out = tmp_path / "study"
    assert (out / "cells/convnet/n2_s0/cell.json").is_file()
    failed = json.loads((out / "cells/ssl_gan/n2_s0/failed.json").read_text())
    assert "patch_size" in failed["error"]
    assert "## Failed cells" in (out / "results.md").read_text()
    # one cell at a time (a SLURM array task) and the cell list
    capsys.readouterr()
    assert main(["study", "--config", str(cfg), "--list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["0\tconvnet/n2_s0", "1\tssl_gan/n2_s0"]


def test_bad_study_configs_are_named(tmp_path, syn):
    cfg = _config(tmp_path, syn, selection="uncertainty")
    with pytest.raises(ValueError, match="selection 'uncertainty' is not one of"):
        Study.load(cfg)
    cfg = _config(tmp_path, syn, methods={"x": str(tmp_path / "missing.yaml")})
    with pytest.raises(ValueError, match="does not exist"):
        Study.load(cfg)
    cfg = _config(tmp_path, syn, colour="blue")
    with pytest.raises(ValueError, match="unknown key"):
        Study.load(cfg)


def test_shipped_study_configs_load():
    for path in sorted((REPO / "conf" / "studies").glob("*.yaml")):
        study = Study.load(path)
        assert study.cells() and all(p.is_file() for p in study.methods.values())


def test_study_cells_are_grouped_and_tagged_wandb_runs(syn, tmp_path, monkeypatch):
    """Without an API key the W&B logger goes offline by itself; the run file holds the config, the
    group and tags of the cell and the test metrics."""
    from wandb.proto import wandb_internal_pb2  # noqa: F401  (the reader needs it)

    from retinalab.lightning.loggers import read_offline_run
    from retinalab.lightning.loggers.wandb_offline import iter_records

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = _config(
        tmp_path,
        syn,
        methods={"convnet": str(REPO / "tests/conf/convnet_tiny.yaml")},
        labelled=[4],
        wandb={"project": "retinalab-test"},
    )
    assert main(["study", "--config", str(cfg)]) == 0
    run_dir = next((tmp_path / "study" / "cells" / "convnet" / "n4_s0").glob("logs/version_0/wandb/offline-run-*"))
    run = read_offline_run(run_dir)
    assert run["config"]["config"]["model"]["init_args"]["width"] == 0.1 and run["config"]["data/split_hash"]
    assert any("test/image_auroc" in row for row in run["history"]) and any(
        "val/patch_auroc" in row for row in run["history"]
    )
    meta = next(r.run for r in iter_records(next(run_dir.glob("run-*.wandb"))) if r.WhichOneof("record_type") == "run")
    assert meta.run_group == "tiny" and meta.display_name == "tiny/convnet/n4_s0"
    assert set(meta.tags) == {"convnet", "idrid", "labelled_4", "seed_0", "random"}
    cell = json.loads((tmp_path / "study" / "cells" / "convnet" / "n4_s0" / "cell.json").read_text())
    last = [row for row in run["history"] if "test/image_auroc" in row][-1]
    assert last["test/image_auroc"] == pytest.approx(cell["metrics"]["test/image_auroc"])
    # the study's summary run: results.csv as a Table, mean +- std per count, a curve and a plot per metric
    summary_dir = next((tmp_path / "study" / "summary").glob("wandb/offline-run-*"))
    summary = read_offline_run(summary_dir)
    meta = next(
        r.run for r in iter_records(next(summary_dir.glob("run-*.wandb"))) if r.WhichOneof("record_type") == "run"
    )
    assert meta.run_group == "tiny" and meta.job_type == "study-summary"
    (row,) = summary["history"]  # nested values come back flattened: "results/_type", ...
    assert row["results/_type"] == "table-file" and row["results/nrows"] == 1
    assert row["summary/_type"] == "table-file" and row["plots/test/image_auroc/_type"] == "image-file"
    table = json.loads((summary_dir / "files" / row["results/path"]).read_text())
    col = table["columns"].index("test/image_auroc")
    assert table["data"][0][col] == pytest.approx(cell["metrics"]["test/image_auroc"])
    curve = json.loads((summary_dir / "files" / row["curves/test/image_auroc_table/path"]).read_text())
    assert curve["columns"] == ["step", "lineKey", "lineVal"] and curve["data"] == [
        [4, "convnet", pytest.approx(cell["metrics"]["test/image_auroc"])]
    ]
    assert summary["summary"]["test/image_auroc/convnet/n4"] == pytest.approx(cell["metrics"]["test/image_auroc"])
    # the cell's W&B run is named in cell.json and in the summary's models table; offline, no artifact was logged
    from retinalab.lightning.loggers import run_piece_id

    assert cell["wandb_run"]["id"] == run_piece_id(run_dir) and cell["wandb_run"]["artifact"] is None
    models = json.loads((summary_dir / "files" / row["models/path"]).read_text())
    assert models["columns"] == ["method", "labelled", "seed", "run", "artifact"] and models["data"] == [
        ["convnet", "4", 0, run_piece_id(run_dir), ""]
    ]


def test_an_online_summary_links_each_cells_best_model_artifact():
    """Online, the summary run uses each cell's model-<id>:best (W&B's lineage from the study to the
    weights); a cell without an artifact is left out, and one W&B cannot find is skipped, not fatal."""
    from retinalab.experiments.report import link_model_artifacts, model_rows

    rows = [
        {
            "method": "convnet",
            "labelled": 10,
            "seed": 0,
            "wandb_run": {"id": "a1", "project": "p", "entity": "lab", "artifact": "model-a1"},
        },
        {
            "method": "ssl_gan",
            "labelled": None,
            "seed": 1,
            "wandb_run": {"id": "b2", "project": "p", "entity": None, "artifact": "model-b2"},
        },
        {
            "method": "fixmatch",
            "labelled": 10,
            "seed": 0,
            "wandb_run": {"id": "c3", "project": "p", "entity": None, "artifact": None},
        },
    ]

    class Run:
        offline = False
        used: list = []

        def use_artifact(self, name, type):
            if name.startswith("p/model-b2"):
                raise ValueError("artifact not found")
            self.used.append((name, type))

    run = Run()
    assert link_model_artifacts(run, rows) == 1 and run.used == [("lab/p/model-a1:best", "model")]
    assert model_rows(rows) == [
        ["convnet", "10", 0, "a1", "model-a1:best"],
        ["ssl_gan", "all", 1, "b2", "model-b2:best"],
        ["fixmatch", "10", 0, "c3", ""],
    ]
    run.offline = True
    assert link_model_artifacts(run, rows) == 0


def test_wandb_credentials_decide_online_or_offline(monkeypatch, tmp_path):
    from retinalab.lightning.loggers import has_wandb_credentials

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not has_wandb_credentials()
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (tmp_path / "netrc").chmod(0o600)
    assert has_wandb_credentials()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert not has_wandb_credentials()
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert has_wandb_credentials()


def test_a_study_runs_as_a_sweep_of_its_cells(syn, tmp_path):
    from retinalab.experiments.sweep import assignments, load_sweep

    cfg = _config(tmp_path, syn, methods={"convnet": str(REPO / "tests/conf/convnet_tiny.yaml")}, labelled=[2, 4])
    sweep = tmp_path / "study_sweep.yaml"
    assert main(["study", "--config", str(cfg), "--write-sweep", str(sweep)]) == 0
    loaded = load_sweep(sweep)
    assert [a["cell"] for a in assignments(loaded, None)] == [0, 1] and "  - ${args}" in sweep.read_text()
    assert main(["sweep", str(sweep), "--count", "1", "--out", str(tmp_path / "sw")]) == 0  # what a W&B agent would run
    assert (tmp_path / "study/cells/convnet/n2_s0/cell.json").is_file() and not (
        tmp_path / "study/cells/convnet/n4_s0"
    ).exists()


def test_each_cell_keeps_its_checkpoints_in_its_own_folder(syn, tmp_path):
    """A config's checkpoint dirpath (relative, as in conf/) would be one folder for every cell."""
    cfg = _config(
        tmp_path,
        syn,
        methods={"convnet": str(REPO / "tests/conf/convnet_tiny.yaml")},
        labelled=[2, 4],
        method_overrides={
            "convnet": [
                "--trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint",
                "--trainer.callbacks.dirpath=shared/checkpoints",
                "--trainer.callbacks.monitor=val/patch_auroc",
                "--trainer.callbacks.mode=max",
                "--trainer.callbacks.filename=best",
            ]
        },
    )
    assert main(["study", "--config", str(cfg)]) == 0
    paths = [
        json.loads((tmp_path / "study/cells/convnet" / c / "cell.json").read_text())["checkpoint"]
        for c in ("n2_s0", "n4_s0")
    ]
    assert [Path(p).parent for p in paths] == [
        tmp_path / "study/cells/convnet" / c / "checkpoints" for c in ("n2_s0", "n4_s0")
    ]
    assert all(Path(p).is_file() for p in paths)


# slow tier (make test-slow; CI runs it after make test): ~30 s; parallel cells are also run by the failing-cell test
@pytest.mark.slow
def test_parallel_cells_overlap_and_match_a_sequential_run(syn, tmp_path, capsys):
    """`--parallel 2 --devices cpu`: two `retinalab study --cell I` processes at once, one CPU thread
    each; the cells' time spans overlap, and split, labelled images and metrics equal those of the
    same cells run one after another in this process."""
    (tmp_path / "seq").mkdir()
    (tmp_path / "par").mkdir()
    seq, par = (
        _config(tmp_path / d, syn, methods={"convnet": str(REPO / "tests/conf/convnet_tiny.yaml")}, labelled=[2, 4])
        for d in ("seq", "par")
    )
    assert main(["study", "--config", str(seq)]) == 0
    capsys.readouterr()
    assert main(["study", "--config", str(par), "--parallel", "2", "--devices", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "as 2 processes (cpu, 1 CPU thread(s) each)" in out and "2/2 convnet/n" in out and "elapsed" in out
    cells = {}
    for run in ("seq", "par"):
        for n in (2, 4):
            cells[run, n] = json.loads(
                (tmp_path / run / "study" / "cells" / "convnet" / f"n{n}_s0" / "cell.json").read_text()
            )
    a, b = cells["par", 2], cells["par", 4]
    assert a["started"] < b["finished"] and b["started"] < a["finished"], "the two cells did not run at the same time"
    assert a["torch_threads"] == b["torch_threads"] == 1 and "--trainer.accelerator=cpu" in a["args"]
    for n in (2, 4):
        s, p = cells["seq", n], cells["par", n]
        assert p["split_hash"] == s["split_hash"]
        assert set(p["metrics"]) == set(s["metrics"])
        for k in s["metrics"]:
            assert p["metrics"][k] == pytest.approx(s["metrics"][k], rel=1e-5, abs=1e-6), k
    assert (tmp_path / "par" / "study" / "cells" / "convnet" / "n2_s0" / "cell.log").stat().st_size > 0
    assert len(pd.read_csv(tmp_path / "par" / "study" / "results.csv")) == 2


def test_a_parallel_cell_that_dies_is_recorded_and_the_rest_go_on(syn, tmp_path, capsys):
    """A cell whose process fails writes failed.json (the other cell still finishes); --parallel with
    --cell is refused; an impossible --devices is named."""
    cfg = _config(tmp_path, syn, labelled=[2], method_overrides={"ssl_gan": ["--data.patch_size=1000"]})
    assert main(["study", "--config", str(cfg), "--parallel", "2", "--devices", "cpu"]) == 1
    out = tmp_path / "study"
    assert (out / "cells/convnet/n2_s0/cell.json").is_file()
    assert "patch_size" in json.loads((out / "cells/ssl_gan/n2_s0/failed.json").read_text())["error"]
    assert "FAILED (exit 1" in capsys.readouterr().out
    assert main(["study", "--config", str(cfg), "--parallel", "2", "--cell", "0"]) == 2
    assert "--parallel" in capsys.readouterr().err
    from retinalab.experiments.launch import plan_slots

    with pytest.raises(ValueError, match="not visible"):
        plan_slots(2, "7")
    assert [s.threads for s in plan_slots(3, "cpu", cores=16)] == [5, 5, 5]
    assert plan_slots(1, "cpu", cores=1)[0].env()["OMP_NUM_THREADS"] == "1"


def test_a_study_killed_mid_cell_keeps_finished_cells_and_resumes_the_killed_one(
    syn, tmp_path, capsys, caplog, monkeypatch
):
    """`retinalab study` killed with SIGKILL as its second cell starts epoch 2 of 3: the first cell's
    result is kept; the rerun does only the second cell, from the `last.ckpt` of its epoch 1 (before,
    it started that cell over), and ends with the metrics of the same cell run without a kill."""
    import os
    import signal
    import subprocess
    import sys

    import torch

    convnet = {"convnet": str(REPO / "tests/conf/convnet_tiny.yaml")}
    every = ["--trainer.max_epochs=3", "--trainer.callbacks+=retinalab.lightning.LatestCheckpoint"]
    (tmp_path / "ref").mkdir()
    assert (
        main(
            [
                "study",
                "--config",
                str(_config(tmp_path / "ref", syn, methods=convnet, labelled=[4], method_overrides={"convnet": every})),
            ]
        )
        == 0
    )
    reference = json.loads((tmp_path / "ref/study/cells/convnet/n4_s0/cell.json").read_text())["metrics"]
    cfg = _config(
        tmp_path,
        syn,
        methods=convnet,
        labelled=[2, 4],
        method_overrides={"convnet": [*every, "--trainer.callbacks+=tests.helpers.ddp_helpers.KillOnNthFit"]},
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "WANDB_MODE": "offline",
        "RETINALAB_TEST_KILL_FIT": "2",
        "RETINALAB_TEST_KILL_FIT_EPOCH": "2",
    }
    cmd = [sys.executable, "-m", "retinalab", "study", "--config", str(cfg)]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
    cells = tmp_path / "study" / "cells" / "convnet"
    first = (cells / "n2_s0" / "cell.json").read_text()
    assert not (cells / "n4_s0" / "cell.json").exists() and not (cells / "n4_s0" / "failed.json").exists()
    last = cells / "n4_s0" / "checkpoints" / "last.ckpt"
    steps = torch.load(last, weights_only=True)["global_step"]  # epochs 0-1
    monkeypatch.setenv("RETINALAB_TEST_KILL_FIT", "0")  # the rerun, in this process
    monkeypatch.chdir(tmp_path)
    caplog.set_level("INFO")
    capsys.readouterr()
    assert main(["study", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "1 cell(s) run, 0 failed, 1 already done or failed" in out
    assert f"cell convnet/n4_s0: resuming from {last} (after {steps} optimiser steps)" in out
    assert f"Restored all states from the checkpoint at {last}" in caplog.text  # Lightning's own word
    assert (cells / "n2_s0" / "cell.json").read_text() == first
    cell = json.loads((cells / "n4_s0" / "cell.json").read_text())
    assert cell["resumed_from"] == str(last) and torch.load(last, weights_only=True)["global_step"] == steps * 3 // 2
    assert cell["metrics"].keys() == reference.keys()
    for k, v in reference.items():
        assert cell["metrics"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


def test_waiting_for_an_offline_run_ends_at_its_exit_record(tmp_path):
    """finish() returns before W&B's service has written the run file to its end (a reader right after
    it once found the test metrics missing); the loggers wait for the exit record, and give up after
    the timeout on a file that never gets one."""
    import wandb

    from retinalab.lightning.loggers import read_offline_run, wait_for_offline_run

    run = wandb.init(project="t", dir=str(tmp_path), mode="offline")
    run.log({"x": 1.0})
    run_dir = Path(run.dir).parent
    run.finish()
    assert wait_for_offline_run(run_dir, timeout=15)
    assert read_offline_run(run_dir)["history"][0]["x"] == 1.0
    cut = tmp_path / "cut"
    cut.mkdir()
    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    (cut / "run-x.wandb").write_bytes(data[:200])  # the header and a first record or part of one
    assert not wait_for_offline_run(cut, timeout=0.3)
    # a process killed while W&B wrote: the records before the cut are read, the one cut short is left out
    (cut / "run-x.wandb").write_bytes(data[:-3])
    assert read_offline_run(cut)["history"][0]["x"] == 1.0
