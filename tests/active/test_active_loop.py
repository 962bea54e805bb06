"""Paper 002's active-learning loop: exudate patches, Algorithms 1 and 2, oracles, faults and resumption."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from retinalab.active import ActiveLearning, ExudatePatchConfig, ExudatePatches, RunOptions
from retinalab.active.learner import Learner
from retinalab.active.oracle import LabelFileError
from retinalab.active.outputs import make_wandb_logger
from retinalab.active.pool import CENTRED, EXUDATE, GRID, HEALTHY, dihedral, window_sums
from retinalab.active.strategies import Strategy
from retinalab.cli import main
from retinalab.datasets import read_dataset
from retinalab.models.lenet import LeNet
from retinalab.preprocessing import load_fundus
from tests.helpers.active import TINY, assert_top, loop
from tests.helpers.egl_by_hand import phi_by_hand
from tests.helpers.paths import REPO


def history(out: Path) -> list[dict]:
    state = json.loads((out / "state.json").read_text())
    return [{k: v for k, v in row.items() if k != "time"} for row in state["history"]]


# ---------------------------------------------------------------- patch data
def test_centred_and_grid_patches_follow_the_mask(eophtha_root, tmp_path):
    """Exudate patches are centred on exudate pixels, healthy ones hold none, grid labels are 'any pixel'."""
    records = read_dataset("eophtha", eophtha_root, parts=["EX"])
    cfg = ExudatePatchConfig(
        image_size=64, patch_size=16, exudate_per_image=5, healthy_per_image=4, grid_stride=8, view_size=64
    )
    pool = ExudatePatches.build(records, cfg, tmp_path / "cache", progress=False)
    assert len(pool.images) == len(records) == 5
    labels, kind, image, centre = (np.asarray(a) for a in (pool.labels, pool.kind, pool.image, pool.centre))
    for i, rec in enumerate(records):
        pre = load_fundus(rec, 64, structures=("EX",))
        mask = pre.masks["EX"]
        sums = window_sums(mask, 16)
        mine = image == i
        ex = mine & (kind == CENTRED) & (labels == EXUDATE)
        assert ex.sum() == min(5, mask[8:57, 8:57].sum())
        assert all(mask[y, x] for y, x in centre[ex])
        for y, x in centre[mine & (kind == CENTRED) & (labels == HEALTHY)]:
            assert sums[y - 8, x - 8] == 0
        for j in np.flatnonzero(mine & (kind == GRID)):
            y, x = centre[j] - 8
            assert labels[j] == int(sums[y, x] > 0)
            assert np.array_equal(pool.patches[j], pre.image[y : y + 16, x : x + 16])
    assert (labels[kind == CENTRED] == EXUDATE).sum() > 0 and (labels[kind == GRID] >= 0).all()
    # the same records and parameters reuse the cache
    again = ExudatePatches.build(records, cfg, tmp_path / "cache", progress=False)
    assert again.path == pool.path and len(list((tmp_path / "cache").iterdir())) == 1


def test_egl_heatmap_is_in_units_of_phi(eophtha_root, tmp_path):
    """Each grid patch's square of the (unblurred) map holds its own Phi; the picture is written."""
    from PIL import Image

    from retinalab.active.plots import egl_map, write_heatmap

    pool = ExudatePatches.build(
        read_dataset("eophtha", eophtha_root, parts=["EX"]), TINY, tmp_path / "cache", progress=False
    )
    grid = np.flatnonzero((np.asarray(pool.image) == 0) & (np.asarray(pool.kind) == GRID))
    phi = np.linspace(0.1, 2.0, len(grid))
    heat = egl_map(pool, grid, phi, TINY.image_size, blur=False)
    for j, v in zip(grid, phi, strict=True):
        cy, cx = pool.centre[j]
        assert np.allclose(heat[cy - 8 : cy + 8, cx - 8 : cx + 8], v)
    blurred = egl_map(pool, grid, phi, TINY.image_size)
    assert 0 < blurred.max() <= phi.max() + 1e-6 and blurred.min() >= 0  # blurring averages: no new extremes
    out = write_heatmap(pool, 0, grid, phi, tmp_path / "heat" / "round_000.png", title="E0000001: round 0")
    width, height = Image.open(out).size
    assert width > 1.5 * height and not list(out.parent.glob(".*tmp*"))


def test_group_by_image_matches_a_scan_per_image():
    from retinalab.active.pool import group_by_image

    rng = np.random.default_rng(0)
    image = np.sort(rng.integers(0, 30, 2_000))  # the pool's image column (patches of an image are contiguous)
    items = np.sort(rng.choice(2_000, 700, replace=False))
    wanted = [29, 3, 0, 31, 17]  # any order; 31 owns no patch
    groups = group_by_image(items, image, wanted)
    assert list(groups) == wanted
    for i in wanted:
        assert np.array_equal(groups[i], items[image[items] == i])
    shuffled = group_by_image(rng.permutation(items), image, wanted)
    assert all(np.array_equal(np.sort(shuffled[i]), groups[i]) for i in wanted)


def test_dihedral_variants_are_the_eight_symmetries():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    v = dihedral(x)
    assert v.shape == (16, 3, 5, 5) and torch.equal(v[:2], x)
    flat = {tuple(v[k * 2].flatten().tolist()) for k in range(8)}
    assert len(flat) == 8  # all distinct for an asymmetric patch
    assert torch.equal(v[2], torch.rot90(x[0], 1, (1, 2))) and torch.equal(v[8], x[0].flip(2))
    # training's per-sample variant (apply_dihedral) is the same symmetry as dihedral()'s variant-major block
    from retinalab.active.learner import apply_dihedral

    batch = torch.rand(24, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    variant = torch.arange(24) % 8
    want = torch.stack([dihedral(batch[i : i + 1])[int(variant[i])] for i in range(24)])
    assert torch.equal(apply_dihedral(batch, variant), want)


def test_splits_are_by_patient_and_balanced(synth_eophtha, tmp_path):
    al = loop(synth_eophtha, tmp_path / "run")
    al.setup()
    groups = {name: {al.pool.images[i]["group"] for i in ids} for name, ids in al.data.split.items()}
    assert (
        not (groups["train"] & groups["val"])
        and not (groups["train"] & groups["test"])
        and not (groups["val"] & groups["test"])
    )
    labels = np.asarray(al.pool.labels)
    for items in (al.data.eval_items["val"], al.data.eval_items["test"], al.data.pool_items):
        counts = np.bincount(labels[items], minlength=2)
        assert counts[0] == counts[1] > 0
    assert set(np.asarray(al.pool.image)[al.data.pool_items]) <= set(al.data.split["train"])


# ---------------------------------------------------------------- selection rules in the loop


@pytest.mark.parametrize("reading", ["selected_images", "pool"])
def test_algorithm2_opens_the_image_with_the_largest_summed_egl_and_reads_line_10_as_asked(
    synth_eophtha, tmp_path, reading
):
    out = tmp_path / "run"
    al = loop(synth_eophtha, out, max_rounds=1, k=3, track_images=0, image_patches=reading, keep_checkpoints=True)
    assert al.run() == "finished"
    state = json.loads((out / "state.json").read_text())
    net = LeNet(2, TINY.patch_size, 3, (4, 8), 16)
    net.load_state_dict(
        torch.load(out / "model-round000.pt", weights_only=True)["model"]
    )  # the model that chose round 1
    round0 = {row["item"] for row in state["history"] if row["round"] == 0}
    round1 = [row for row in state["history"] if row["round"] == 1]
    candidates = [i for i in al.data.split["train"] if set(al.data.items_of_image[i].tolist()) - round0]
    sigma = {i: phi_by_hand(net, al.pool.tensor(al.data.grid_of_image[i])).sum() for i in candidates}
    best = max(sigma, key=sigma.get)
    assert sorted(sigma.values())[-1] > sorted(sigma.values())[-2] * (1 + 1e-4)  # a clear winner
    assert state["labelled_images"] == sorted({int(al.pool.image[i]) for i in round0} | {best})
    assert state["metrics"][1]["selected_sigma"] == pytest.approx(sigma[best], rel=1e-3)
    own = [int(i) for i in al.data.items_of_image[best]]
    items = {row["item"] for row in round1}
    if reading == "selected_images":  # the 3 patches of highest EGL among the opened image's patches
        phi = dict(zip(own, phi_by_hand(net, al.pool.tensor(own)), strict=True))
        assert_top(items, phi, 3)
        for row in round1:
            assert row["score"] == pytest.approx(phi[row["item"]], rel=1e-3)
    else:  # every patch of the image, then the 3 of highest EGL in the rest of the pool
        assert set(own) <= items and len(items) == len(own) + 3
        rest = [int(i) for i in al.data.pool_items if int(i) not in round0 and int(i) not in own]
        phi = dict(zip(rest, phi_by_hand(net, al.pool.tensor(rest)), strict=True))
        assert_top(items - set(own), phi, 3)


@pytest.mark.parametrize("reading", ["selected_images", "pool"])
def test_the_matched_random_arm_labels_as_many_patches_as_egl_each_round(synth_eophtha, tmp_path, reading):
    """Algorithm 2 (Algorithm 1: test_egl_and_random_share_the_initial_set_and_respect_the_budget)."""
    kw = dict(select="images", image_patches=reading, k=4, max_rounds=3, track_images=0)
    assert loop(synth_eophtha, tmp_path / "egl", **kw).run() == "finished"
    rnd = loop(synth_eophtha, tmp_path / "random", acquisition="random", match_labels=str(tmp_path / "egl"), **kw)
    assert rnd.run() == "finished"
    egl_state, rnd_state = (json.loads((tmp_path / a / "state.json").read_text()) for a in ("egl", "random"))
    egl_labels = [m["labels"] for m in egl_state["metrics"]]
    assert [m["labels"] for m in rnd_state["metrics"]] == egl_labels
    assert all(b > a for a, b in zip(egl_labels[:-1], egl_labels[1:], strict=True))
    assert [m["images"] for m in rnd_state["metrics"]] == [m["images"] for m in egl_state["metrics"]]
    if reading == "selected_images":  # every label comes from an image opened that round
        for state in (egl_state, rnd_state):
            for r in range(1, 4):
                rows = [row for row in state["history"] if row["round"] == r]
                assert len({row["image_id"] for row in rows}) == 1 and len(rows) == 4
    assert rnd_state["labelled"] != egl_state["labelled"]
    assert rnd_state["stopped"] == "max_rounds (3) reached"
    # each round reports the area under its F-measure-versus-labels curve so far, over the label range
    for state in (egl_state, rnd_state):
        rows = state["metrics"]
        x, y = np.array([m["labels"] for m in rows], float), np.array([m["test/f1"] for m in rows])
        assert rows[-1]["test/f1_area"] == pytest.approx(np.trapezoid(y, x) / (x[-1] - x[0]))
        assert rows[1]["test/f1_area"] == pytest.approx((y[0] + y[1]) / 2)
    # plot_every: 0 draws the plots once, when the run stops; the tables are there for every round
    assert [p.name for p in (tmp_path / "egl" / "heatmaps").glob("*.png")] == ["round_003.png"]
    assert (
        len(list(csv.DictReader((tmp_path / "egl" / "metrics.csv").open()))) == 4
        and (tmp_path / "egl" / "curves.png").is_file()
    )
    # the random arm copies counts only from a run of the same data, split and initial set
    with pytest.raises(ValueError, match="match_labels: .*seed"):
        loop(
            synth_eophtha, tmp_path / "other", acquisition="random", match_labels=str(tmp_path / "egl"), seed=5, **kw
        ).run()
    with pytest.raises(ValueError, match="acquisition: random"):
        loop(synth_eophtha, tmp_path / "x", match_labels=str(tmp_path / "egl"), **kw)


def test_a_stopping_run_is_saved_and_plotted_once(synth_eophtha, tmp_path, monkeypatch):
    """Whether the run stops in its stopping test (max_rounds) or because nothing is left to ask (the
    matched run ran out), the stopped state reaches state.json and the plots are drawn once."""
    from retinalab.active import plots

    drawn: list[str] = []
    real = plots.write_run_plots
    monkeypatch.setattr(
        plots, "write_run_plots", lambda out, *a, **k: (drawn.append(Path(out).name), real(out, *a, **k))[1]
    )
    kw = dict(select="patches", k=4, track_images=0)
    assert loop(synth_eophtha, tmp_path / "egl", max_rounds=2, **kw).run() == "finished"
    rnd = loop(
        synth_eophtha, tmp_path / "random", acquisition="random", match_labels=str(tmp_path / "egl"), max_rounds=5, **kw
    )
    assert rnd.run() == "finished"
    assert drawn == ["egl", "random"]
    egl, random = (json.loads((tmp_path / a / "state.json").read_text()) for a in ("egl", "random"))
    assert egl["stopped"] == "max_rounds (2) reached"
    assert random["stopped"] == f"the matched run {tmp_path / 'egl'} stopped" and random["round"] == 2
    assert (tmp_path / "random" / "curves.png").is_file()
    # plot_every: None (a benchmark drawing its own figures) never plots, not even when a stopped run is reopened
    for _ in range(2):
        assert (
            loop(synth_eophtha, tmp_path / "quiet", max_rounds=2, plot_every=None, **kw).run(resume=True) == "finished"
        )
    assert drawn == ["egl", "random"] and not list((tmp_path / "quiet").rglob("*.png"))
    assert len(list(csv.DictReader((tmp_path / "quiet" / "metrics.csv").open()))) == 3


@pytest.mark.parametrize(("initial_augment", "steps"), [(False, 2), (True, 16)])
def test_the_initial_model_takes_the_papers_batches(synth_eophtha, tmp_path, monkeypatch, initial_augment, steps):
    """Paper 002: M is "initially trained with 5 batches of 32 samples": initial_batches SGD steps,
    unless the dihedral variants are asked for (8 per patch: 8x the steps)."""
    counted: list[int] = []
    real_setup = ActiveLearning.setup

    def setup(self):
        real_setup(self)
        step = self.learner.optimizer.step
        self.learner.optimizer.step = lambda *a, **k: (counted.append(1), step(*a, **k))[1]

    monkeypatch.setattr(ActiveLearning, "setup", setup)
    al = loop(
        synth_eophtha, tmp_path / "run", select="patches", max_rounds=0, initial_augment=initial_augment, track_images=0
    )
    assert al.run() == "finished"
    assert len(counted) == steps  # 2 batches of 8 patches


def test_egl_and_random_share_the_initial_set_and_respect_the_budget(synth_eophtha, tmp_path):
    runs = {}
    for acq in ("egl", "random"):
        matched = {"match_labels": str(tmp_path / "egl")} if acq == "random" else {}
        al = loop(
            synth_eophtha,
            tmp_path / acq,
            acquisition=acq,
            select="patches",
            max_labels=30,
            max_rounds=5,
            plot_every=1,
            keep_checkpoints=True,
            **matched,
        )
        assert al.run() == "finished"
        runs[acq] = json.loads((tmp_path / acq / "state.json").read_text())
    # Algorithm 1: round 1 asks for the 6 unlabelled pool patches of highest EGL under round 0's model
    net = LeNet(2, TINY.patch_size, 3, (4, 8), 16)
    net.load_state_dict(torch.load(tmp_path / "egl" / "model-round000.pt", weights_only=True)["model"])
    rounds = [{row["item"] for row in runs["egl"]["history"] if row["round"] == r} for r in (0, 1)]
    rest = [int(i) for i in al.data.pool_items if int(i) not in rounds[0]]
    assert_top(rounds[1], dict(zip(rest, phi_by_hand(net, al.pool.tensor(rest)), strict=True)), 6)
    first = [{r["item"] for r in runs[a]["history"] if r["round"] == 0} for a in runs]
    assert first[0] == first[1] and len(first[0]) == 16  # 2 batches of 8
    for state in runs.values():
        assert len(state["labelled"]) == 30 and state["stopped"] == "max_labels (30) reached"
        assert [m["labels"] for m in state["metrics"]] == [16, 22, 28, 30]
    assert runs["egl"]["labelled"] != runs["random"]["labelled"]  # random did not pick the same top 6
    # the study folder gets the EGL-versus-random figure and each run its CSVs
    assert (tmp_path / "figure2.png").is_file()
    rows = list(csv.DictReader((tmp_path / "egl" / "metrics.csv").open()))
    assert {"test/f1", "test/sensitivity", "test/specificity", "val/loss"} <= set(rows[0])
    assert len(list((tmp_path / "egl" / "heatmaps").glob("round_*.png"))) == 4


def test_stops_when_the_monitored_metric_is_flat(synth_eophtha, tmp_path):
    al = loop(synth_eophtha, tmp_path / "run", select="patches", k=2, patience=2, min_delta=100.0, max_rounds=10)
    al.run()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["round"] == 2 and state["stopped"] == "val/loss flat for 2 rounds"


# ---------------------------------------------------------------- faults
class Killed(BaseException):
    pass


@pytest.mark.parametrize(("where", "select"), [("between", "patches"), ("inside", "patches"), ("inside", "images")])
def test_killed_loop_resumes_with_identical_pool_and_history(synth_eophtha, tmp_path, monkeypatch, where, select):
    ref = loop(synth_eophtha, tmp_path / "ref", select=select)
    ref.run()
    asked: list[int] = []
    al = loop(synth_eophtha, tmp_path / "run", select=select)
    real_train, real_choose = Learner.train, Strategy.choose

    def train(self, state, epochs, r):
        if where == "inside" and r == 2:
            raise Killed  # after the oracle answered round 2, before the model update
        return real_train(self, state, epochs, r)

    def choose(self, state, r):
        if where == "between" and r == 2:
            raise Killed
        return real_choose(self, state, r)

    monkeypatch.setattr(Learner, "train", train)
    monkeypatch.setattr(Strategy, "choose", choose)
    with pytest.raises(Killed):
        al.run()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["round"] == 1 and (tmp_path / "run" / state["checkpoint"]).is_file()
    answered = set(json.loads((tmp_path / "run" / "answers.json").read_text()))
    monkeypatch.setattr(Learner, "train", real_train)
    monkeypatch.setattr(Strategy, "choose", real_choose)
    real_setup = ActiveLearning.setup
    monkeypatch.setattr(ActiveLearning, "setup", lambda self: pytest.fail("refused only after the set-up"))
    with pytest.raises(FileExistsError, match="--resume"):
        loop(synth_eophtha, tmp_path / "run", select=select).run()
    again = loop(synth_eophtha, tmp_path / "run", select=select)

    def setup(self):
        real_setup(self)
        oracle = self.oracle
        self.oracle = lambda items, r, scores=None: (asked.extend(items), oracle(items, r, scores))[1]

    monkeypatch.setattr(ActiveLearning, "setup", setup)
    assert again.run(resume=True) == "finished"
    assert not (set(map(str, asked)) & answered)  # never asked again for a label it had
    assert history(tmp_path / "run") == history(tmp_path / "ref")
    a = json.loads((tmp_path / "run" / "state.json").read_text())
    b = json.loads((tmp_path / "ref" / "state.json").read_text())
    assert a["labelled"] == b["labelled"] and a["round"] == b["round"] == 3
    for ma, mb in zip(a["metrics"], b["metrics"], strict=True):
        assert ma["test/f1"] == pytest.approx(mb["test/f1"], abs=1e-6)


def test_kill_9_mid_round_loses_no_label_and_resumes_at_the_last_completed_round(synth_eophtha, tmp_path):
    """`retinalab active` killed with SIGKILL (a process of its own: no handler or `finally` runs) in
    round 2, after the oracle answered and before the model update: the answers of round 2 are in
    `answers.json`, the state is round 1's, and `--resume` keeps rounds 0-1 as they were, asks the
    oracle for none of the answered items again, labels them as answered and finishes round 3. (That a
    resumed run equals an uninterrupted one: test_killed_loop_resumes_with_identical_pool_and_history.)"""
    import signal
    import subprocess
    import sys

    import yaml

    def config(out: Path) -> Path:
        args = {
            "dataset": "eophtha",
            "root": str(synth_eophtha),
            "reader_args": {"parts": ["EX"]},
            "patches": vars(TINY).copy(),
            "out_dir": str(out),
            "k": 6,
            "initial_batches": 2,
            "initial_images": 2,
            "batch_size": 8,
            "conv_channels": [4, 8],
            "hidden": 16,
            "max_rounds": 3,
            "val_size": 0.25,
            "test_size": 0.25,
            "cache_dir": str(tmp_path / "cache"),
            "accelerator": "cpu",
            "progress": False,
            "track_images": 2,
            "plot_every": 0,
        }
        path = tmp_path / f"{out.name}.yaml"
        path.write_text(yaml.safe_dump(args))
        return path

    def active(out: Path, *extra: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tests.helpers.active_kill", "--config", str(config(out)), *extra],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO), **env},
            capture_output=True,
            text=True,
            timeout=600,
        )

    run = tmp_path / "run"
    res = active(run, RETINALAB_TEST_KILL_ROUND="2", RETINALAB_TEST_ASKED=str(tmp_path / "asked_before.jsonl"))
    assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
    state = json.loads((run / "state.json").read_text())
    assert state["round"] == 1 and (run / state["checkpoint"]).is_file()
    before = history(run)
    answers = json.loads((run / "answers.json").read_text())
    asked_before = [json.loads(line) for line in (tmp_path / "asked_before.jsonl").read_text().splitlines()]
    assert set(asked_before[-1]) <= set(answers)  # round 2's answers were journalled before the kill
    res = active(run, "--resume", RETINALAB_TEST_ASKED=str(tmp_path / "asked_after.jsonl"))
    assert res.returncode == 0, res.stderr[-3000:]
    asked_after = {i for line in (tmp_path / "asked_after.jsonl").read_text().splitlines() for i in json.loads(line)}
    assert asked_after and not (asked_after & set(answers))  # never asked again for a label it had
    final = json.loads((run / "answers.json").read_text())
    assert {k: final[k] for k in answers} == answers  # and every label given before the kill kept as given
    after = history(run)
    assert after[: len(before)] == before and len(after) > len(before)
    state = json.loads((run / "state.json").read_text())
    assert state["round"] == 3 and set(answers) <= set(map(str, state["labelled"]))


def test_resume_refuses_a_changed_config(synth_eophtha, tmp_path):
    loop(synth_eophtha, tmp_path / "run", max_rounds=0).run()
    with pytest.raises(ValueError, match="different acquisition"):
        loop(synth_eophtha, tmp_path / "run", acquisition="random").run(resume=True)
    with pytest.raises(ValueError, match="different image_patches"):
        loop(synth_eophtha, tmp_path / "run", image_patches="pool").run(resume=True)
    # a run saved before image_patches existed read line 10 as `pool`: it resumes with that reading only
    path = tmp_path / "run" / "state.json"
    state = json.loads(path.read_text())
    del state["config"]["image_patches"], state["config"]["match_labels"]
    path.write_text(json.dumps(state))
    with pytest.raises(ValueError, match="different image_patches"):
        loop(synth_eophtha, tmp_path / "run", max_rounds=0).run(resume=True)
    assert loop(synth_eophtha, tmp_path / "run", max_rounds=0, image_patches="pool").run(resume=True) == "finished"


# ---------------------------------------------------------------- human oracle
def fill(folder: Path, labels: dict[str, str]) -> None:
    with (folder / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["query_id", "label"])
        w.writerows(labels.items())


def truth(pool: ExudatePatches, folder: Path) -> dict[str, str]:
    rows = list(csv.DictReader((folder / "queries.csv").open()))
    return {r["query_id"]: ("exudate" if pool.labels[int(r["item"])] == EXUDATE else "healthy") for r in rows}


def test_human_oracle_round_trip_with_bad_label_files(synth_eophtha, tmp_path, capsys):
    out = tmp_path / "study" / "human"
    argv = [
        "active",
        "--config",
        str(REPO / "conf" / "active" / "eophtha_human.yaml"),
        "--root",
        str(synth_eophtha),
        "--out_dir",
        str(out),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--patches.image_size=128",
        "--patches.patch_size=16",
        "--patches.grid_stride=16",
        "--patches.view_size=128",
        "--k=4",
        "--initial_batches=1",
        "--batch_size=8",
        "--hidden=16",
        "--conv_channels=[4,8]",
        "--max_rounds=1",
        "--num_workers=0",
        "--progress=false",
        "--accelerator=cpu",
    ]
    assert main(argv) == 0
    r0 = out / "queries" / "round_000"
    said = capsys.readouterr().err
    assert f"8 patches to label in {r0}; label them in the browser with `retinalab label --run {out}`" in said
    assert f"or fill in {r0 / 'labels.csv'} and run the same command with --resume" in said
    assert json.loads((out / "manifest.json").read_text())["config"]["oracle"] == "human"
    queries = list(csv.DictReader((r0 / "queries.csv").open()))
    assert len(queries) == 8 and all(
        (r0 / q["patch_png"]).is_file() and (r0 / q["image_png"]).is_file() for q in queries
    )
    al = ActiveLearning(
        patches=ExudatePatchConfig(image_size=128, patch_size=16, grid_stride=16, view_size=128),
        cache_dir=str(tmp_path / "cache"),
        root=str(synth_eophtha),
        reader_args={"parts": ["EX"]},
        oracle="human",
        pool_kind="grid",
        accelerator="cpu",
    )
    al.setup()
    answers = truth(al.pool, r0)
    qids = sorted(answers)
    # resuming with the blank labels.csv writes nothing new and keeps waiting
    assert main([*argv, "--resume"]) == 0 and not (out / "answers.json").exists()
    # a missing label, an unknown word and a query that was never asked
    bad = dict(answers)
    bad[qids[0]] = ""
    bad[qids[1]] = "maybe"
    bad["q9999"] = "exudate"
    fill(r0, bad)
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "labels.csv" in err and "'maybe'" in err and "q9999" in err and qids[0] in err
    kept = json.loads((out / "answers.json").read_text())
    assert len(kept) == 6  # the valid labels were kept
    state = json.loads((out / "state.json").read_text())
    assert state["round"] == -1 and state["pending"]["round"] == 0
    # fixed: the loop trains the initial model and writes the next round's queries
    fill(r0, answers)
    assert main([*argv, "--resume"]) == 0
    state = json.loads((out / "state.json").read_text())
    assert state["round"] == 0 and len(state["labelled"]) == 8
    assert {str(k): v for k, v in state["labelled"].items()} == {
        str(k): v["label"] for k, v in json.loads((out / "answers.json").read_text()).items()
    }
    r1 = out / "queries" / "round_001"
    assert len(list(csv.DictReader((r1 / "queries.csv").open()))) == 4
    fill(r1, truth(al.pool, r1))
    assert main([*argv, "--resume"]) == 0
    state = json.loads((out / "state.json").read_text())
    assert state["stopped"] == "max_rounds (1) reached" and len(state["labelled"]) == 12
    assert (out / "metrics.csv").is_file() and (out / "queries.csv").is_file()
    # one run folder and one W&B run for the whole loop, though it stopped for labels after round 0
    # (before, every --resume started a W&B run of its own)
    from retinalab.lightning.loggers import read_run_metrics

    (version,) = (out / "logs").glob("version_*")
    pieces = sorted(version.glob("wandb/offline-run-*"))
    assert len(pieces) == 2 and len({p.name.rsplit("-", 1)[-1] for p in pieces}) == 1
    assert state["run"]["dir"] == str(version.resolve()) and pieces[0].name.endswith(state["run"]["wandb_id"])
    assert read_run_metrics(version).dropna(subset=["active/labels"])["active/labels"].tolist() == [8, 12]


def test_read_labels_rejects_conflicts_and_a_changed_queries_file(synth_eophtha, tmp_path):
    from retinalab.active.oracle import HumanOracle, LabelsPending

    al = loop(synth_eophtha, tmp_path / "run", oracle="human", pool_kind="grid")
    al.setup()
    oracle = HumanOracle(al.pool, tmp_path / "q")
    items = [int(i) for i in al.data.pool_items[:3]]
    with pytest.raises(LabelsPending):
        oracle(items, 0)
    d = oracle.round_dir(0)
    with (d / "labels.csv").open("w") as f:
        f.write("query_id,label\nq0000,exudate\nq0000,healthy\nq0001,1\nq0002,H\n")
    with pytest.raises(LabelFileError, match="labelled twice") as e:
        oracle(items, 0)
    assert e.value.partial == {items[1]: 1, items[2]: 0}
    with pytest.raises(LabelFileError, match="another run"):
        oracle([*items, int(al.data.pool_items[5])], 0)


def test_all_active_configs_parse(monkeypatch, tmp_path):
    """Every conf/active config builds, logging to W&B (offline without an API key), named and tagged per run."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from retinalab.lightning.loggers import WandbLogger

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for cfg in sorted((REPO / "conf" / "active").glob("*.yaml")):
        p = ArgumentParser()
        p.add_argument("--config", action=ActionConfigFile)
        p.add_class_arguments(RunOptions, None, fail_untyped=True)
        parsed = p.parse_args(["--config", str(cfg)])
        init = p.instantiate_classes(parsed)
        init.pop("config", None)
        o = ActiveLearning(RunOptions(**init)).options
        if cfg.name == "synthetic_human.yaml":  # the README's walkthrough of the page: minutes on a CPU, no logger
            assert o.oracle == "human" and o.patches.image_size == 128 and o.logger is None
            continue
        assert o.patches.patch_size in (32, 48) and o.lr == 0.01 and o.batch_size == 32, cfg.name
        assert o.logger == "wandb", cfg.name
        lg = make_wandb_logger(o)
        assert isinstance(lg, WandbLogger) and lg._offline_run and lg._experiment is None
        assert lg._wandb_init["name"] == f"active/{o.dataset}-{o.acquisition}-{o.select}-s{o.seed}"
        assert o.acquisition in lg._wandb_init["tags"] and Path(lg.save_dir).parent == Path(o.out_dir) / "logs"


# ---------------------------------------------------------------- DDP and W&B
def test_a_score_batch_size_below_one_is_refused_up_front(tmp_path):
    with pytest.raises(ValueError, match="score_batch_size must be a positive number of patches, got 0"):
        loop(tmp_path / "missing", tmp_path / "run", score_batch_size=0)
    assert not (tmp_path / "run").exists()


# slow tier (make test-slow-only; CI runs it after make test): two Fabric ranks, ~30 s
@pytest.mark.slow
def test_ddp_ranks_score_shards_and_gather_the_same_ranking(synth_eophtha, tmp_path):
    """Two CPU processes (gloo): round 1's EGL scores, gathered from both ranks' shards, equal the
    scores one process computes with the round-0 checkpoint, and so does the top-k choice."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    kw = dict(select="patches", max_rounds=1, keep_checkpoints=True)
    args = [
        "active",
        "--dataset=eophtha",
        f"--root={synth_eophtha}",
        "--reader_args={parts: [EX]}",
        f"--out_dir={out}",
        f"--cache_dir={tmp_path / 'cache'}",
        "--patches.image_size=128",
        "--patches.patch_size=16",
        "--patches.exudate_per_image=12",
        "--patches.healthy_per_image=12",
        "--patches.grid_stride=16",
        "--patches.view_size=128",
        "--k=6",
        "--initial_batches=2",
        "--batch_size=8",
        "--conv_channels=[4,8]",
        "--hidden=16",
        "--val_size=0.25",
        "--test_size=0.25",
        "--track_images=2",
        "--select=patches",
        "--max_rounds=1",
        "--keep_checkpoints=true",
        "--progress=false",
        "--accelerator=cpu",
        "--devices=2",
        "--strategy=ddp",
    ]
    env = {**__import__("os").environ, "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-m", "retinalab", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out / "state.json").read_text())
    assert state["round"] == 1 and state["stopped"] == "max_rounds (1) reached"
    ref = loop(synth_eophtha, tmp_path / "single", **kw)
    ref.setup()
    ckpt = torch.load(out / "model-round000.pt", weights_only=True)
    ref.learner.net.load_state_dict(ckpt["model"])
    round0 = {row["item"] for row in state["history"] if row["round"] == 0}
    remaining = np.array([i for i in ref.data.pool_items if int(i) not in round0])
    phi, _ = ref.strategy.score(remaining)
    order = torch.argsort(-phi.double(), stable=True)[:6]
    round1 = [row for row in state["history"] if row["round"] == 1]
    assert [row["item"] for row in round1] == [int(remaining[i]) for i in order]
    assert [row["score"] for row in round1] == pytest.approx([float(phi[i]) for i in order], rel=1e-4)


def test_metrics_and_plots_reach_an_offline_wandb_run(synth_eophtha, tmp_path, monkeypatch):
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(project="retinalab-test", save_dir=str(tmp_path), offline=True)
    logged: list[tuple[dict, int]] = []
    real = WandbLogger.log_metrics
    # wandb >= 0.2x keeps history in a binary log with no Python reader, so metrics are read at the logger
    monkeypatch.setattr(
        WandbLogger,
        "log_metrics",
        lambda self, metrics, step=None: (logged.append((dict(metrics), step)), real(self, metrics, step))[1],
    )
    al = loop(synth_eophtha, tmp_path / "run", select="patches", max_rounds=1, logger=logger, plot_every=1)
    assert al.run() == "finished"
    assert al.learner.score_batch_size == 256  # the CPU default (4096 on a GPU)
    logger.experiment.finish()
    run_dir = next(tmp_path.glob("wandb/offline-run-*"))
    # one key per plot (W&B lays out the images of one key side by side and wants them the same size)
    for name in ("curves", "interestingness", "heatmap"):
        assert len(list(run_dir.glob(f"files/media/images/active/{name}_*.png"))) == 2, name  # rounds 0 and 1
    metrics = json.loads((tmp_path / "run" / "state.json").read_text())["metrics"]
    logged = [(m, step) for m, step in logged if "active/labels" in m]  # log_image goes through log_metrics too
    assert [step for _, step in logged] == [0, 1]
    assert (
        logged[1][0]["active/test/f1"] == pytest.approx(metrics[1]["test/f1"]) and logged[1][0]["active/labels"] == 22
    )


def test_idrid_hard_exudate_masks_give_exudate_patches(idrid_root, tmp_path):
    """IDRiD's '3. Hard Exudates' masks (0/1 greyscale here) feed the same patch builder."""
    records = read_dataset("idrid", idrid_root, subsets=["segmentation"])
    cfg = ExudatePatchConfig(
        image_size=64, patch_size=16, exudate_per_image=3, healthy_per_image=3, grid_stride=16, view_size=64
    )
    pool = ExudatePatches.build(records, cfg, tmp_path / "cache", progress=False)
    labels, kind, image = np.asarray(pool.labels), np.asarray(pool.kind), np.asarray(pool.image)
    for i in range(len(records)):
        assert ((image == i) & (kind == CENTRED) & (labels == EXUDATE)).sum() == 3
        assert ((image == i) & (kind == GRID) & (labels == EXUDATE)).sum() >= 1
    assert [img["image_id"] for img in pool.images] == [r.image_id for r in records]


def test_a_corrupt_photograph_is_named_or_skipped(eophtha_root, tmp_path):
    from retinalab.datasets import DataFormatError

    records = read_dataset("eophtha", eophtha_root, parts=["EX"])
    Path(records[1].image_path).write_bytes(b"not a jpeg")
    cfg = ExudatePatchConfig(image_size=64, patch_size=16, grid_stride=16, view_size=64)
    with pytest.raises(DataFormatError, match=str(records[1].image_path)):
        ExudatePatches.build(records, cfg, tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").iterdir())  # nothing half-built is left behind
    pool = ExudatePatches.build(records, cfg, tmp_path / "cache", on_error="skip", progress=False)
    assert (
        len(pool.images) == 4
        and len(pool.skipped) == 1
        and records[1].image_id not in [i["image_id"] for i in pool.images]
    )
    assert int(np.asarray(pool.image).max()) == 3 and all(
        (pool.path / "views" / f"{i:06d}.png").is_file() for i in range(4)
    )


def test_a_run_takes_another_runs_initial_model_instead_of_training_its_own(synth_eophtha, tmp_path, monkeypatch):
    """initial_from: a margin arm starts from the EGL arm's round-0 model (the same weights and round-0
    metrics, no SGD at round 0); every run keeps its round-0 checkpoint beside the latest; a run of another
    seed or with BALD's dropout LeNet is refused, naming the field."""
    import retinalab.active.learner as learner_module

    kw = dict(select="patches", k=4, max_rounds=2, track_images=0, initial_epochs=3)
    assert loop(synth_eophtha, tmp_path / "egl", **kw).run() == "finished"
    assert sorted(p.name for p in (tmp_path / "egl").glob("model-round*.pt")) == [
        "model-round000.pt",
        "model-round002.pt",
    ]
    epochs = []
    real = learner_module.sgd_epochs
    monkeypatch.setattr(learner_module, "sgd_epochs", lambda *a, **k: epochs.append(k["epochs"]) or real(*a, **k))
    assert (
        loop(synth_eophtha, tmp_path / "margin", acquisition="margin", initial_from=str(tmp_path / "egl"), **kw).run()
        == "finished"
    )
    assert epochs == [1, 1]  # rounds 1 and 2 (one epoch each); training round 0 would have taken 3
    egl, margin = (json.loads((tmp_path / a / "state.json").read_text()) for a in ("egl", "margin"))
    for key in ("labels", "train/loss", "val/loss", "test/f1", "test/auroc"):
        assert margin["metrics"][0][key] == egl["metrics"][0][key], key
    w_egl, w_margin = (
        torch.load(tmp_path / a / "model-round000.pt", weights_only=True)["model"] for a in ("egl", "margin")
    )
    assert all(torch.equal(w_egl[k], w_margin[k]) for k in w_egl)
    with pytest.raises(ValueError, match="initial_from: .*seed"):
        loop(
            synth_eophtha, tmp_path / "seed5", acquisition="margin", initial_from=str(tmp_path / "egl"), seed=5, **kw
        ).run()
    with pytest.raises(ValueError, match="initial_from: .*dropout"):
        loop(synth_eophtha, tmp_path / "bald", acquisition="bald", initial_from=str(tmp_path / "egl"), **kw).run()
