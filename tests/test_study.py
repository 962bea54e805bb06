"""`retinalab study`: the grid, shared splits, failure isolation, resumption and the results table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from retinalab.main import main
from retinalab.study import Study

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    from retinalab.synthetic import write_synthetic

    return write_synthetic("idrid", tmp_path_factory.mktemp("study") / "syn", 24, 7, (128, 96), 1.0, 1.0, 1)


def _config(tmp_path: Path, syn: Path, **extra) -> Path:
    cfg = {
        "name": "tiny", "out_dir": str(tmp_path / "study"),
        "methods": {"convnet": str(REPO / "tests/conf/convnet_tiny.yaml"), "ssl_gan": str(REPO / "tests/conf/ssl_gan_tiny.yaml")},
        "labelled": [2, 4], "seeds": [0], "metrics": ["test/image_auroc", "test/patch_auroc"],
        "overrides": [f"--data.root={syn}", f"--data.cache_dir={tmp_path / 'cache'}", "--trainer.enable_progress_bar=false"],
        **extra,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_study_runs_the_grid_on_shared_splits_and_resumes(syn, tmp_path, capsys):
    cfg = _config(tmp_path, syn, method_overrides={"ssl_gan": ["--model.width=0.1"]})
    assert main(["study", "--config", str(cfg)]) == 0
    out = tmp_path / "study"
    cells = {p.parent.relative_to(out / "cells").as_posix(): json.loads(p.read_text()) for p in out.glob("cells/*/*/cell.json")}
    assert set(cells) == {"convnet/n2_s0", "convnet/n4_s0", "ssl_gan/n2_s0", "ssl_gan/n4_s0"}
    # same split and same labelled images for both methods at a count and seed; nested across counts
    for n in (2, 4):
        a, b = (json.loads((out / "cells" / m / f"n{n}_s0" / "split.json").read_text()) for m in ("convnet", "ssl_gan"))
        assert a["hash"] == b["hash"] and a["labeled"] == b["labeled"] and len(a["labeled"]) == n
    two = json.loads((out / "cells/convnet/n2_s0/split.json").read_text())["labeled"]
    four = json.loads((out / "cells/convnet/n4_s0/split.json").read_text())["labeled"]
    assert set(two) <= set(four)
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 4 and {"test/image_auroc", "test/patch_auroc"} <= set(results.columns)
    md = (out / "results.md").read_text()
    assert "| convnet |" in md and "| ssl_gan |" in md and "4 of 4 cells finished" in md
    assert (out / "test_image_auroc.png").is_file()
    # resumption: finished cells are skipped; a removed result is recomputed alone
    (out / "cells/ssl_gan/n4_s0/cell.json").unlink()
    capsys.readouterr()
    assert main(["study", "--config", str(cfg)]) == 0
    text = capsys.readouterr().out
    assert "1 cell(s) run, 0 failed, 3 already done" in text and (out / "cells/ssl_gan/n4_s0/cell.json").is_file()


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
    cfg = _config(tmp_path, syn, selection="egl")
    with pytest.raises(ValueError, match="selection 'egl' is not available"):
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
