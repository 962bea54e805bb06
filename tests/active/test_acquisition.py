"""Acquisition strategies beside EGL (entropy, margin, BALD): scores by hand, and the loop choosing with them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from retinalab.active import (
    ActiveLearning,
    acquisition_scores,
    bald,
    entropy,
    margin,
    mc_dropout_probs,
)
from retinalab.active.strategies import initial_patches
from retinalab.models.lenet import LeNet
from tests.helpers.active import TINY, assert_top, loop


def h(p: list[float]) -> float:
    return -sum(q * math.log(q) for q in p if q > 0)


def test_entropy_margin_and_bald_by_hand():
    p = torch.tensor([[0.2, 0.8], [0.5, 0.5], [1.0, 0.0], [0.7, 0.3]])
    assert entropy(p).tolist() == pytest.approx([h([0.2, 0.8]), math.log(2), 0.0, h([0.7, 0.3])])
    assert margin(p).tolist() == pytest.approx([0.4, 1.0, 0.0, 0.6])
    three = torch.tensor([[0.1, 0.3, 0.6]])
    assert float(entropy(three)[0]) == pytest.approx(h([0.1, 0.3, 0.6]))
    assert float(margin(three)[0]) == pytest.approx(1 - (0.6 - 0.3))  # the two largest, whatever their order
    # BALD: two passes that disagree completely carry information about the weights, agreeing ones none
    samples = torch.tensor(
        [[[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]], [[0.1, 0.9], [0.3, 0.7], [0.5, 0.5]]]
    )  # T=2 x B=3 x K=2
    expected = [math.log(2) - h([0.9, 0.1]), 0.0, 0.0]
    assert bald(samples).tolist() == pytest.approx(expected, abs=1e-7)
    assert bald(samples)[0] > 0.3 and (bald(samples) >= 0).all()


def tiny_net(dropout: float) -> LeNet:
    torch.manual_seed(0)
    return LeNet(2, 16, 3, (4, 8), 16, dropout)


def test_scores_of_a_tiny_model_equal_hand_computations():
    x = torch.rand(7, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    net = tiny_net(0.5)
    net.train()  # the scorer must evaluate without dropout and leave the mode as it found it
    with torch.no_grad():
        net.eval()
        p = torch.softmax(net(x), 1)
        net.train()
    for name, fn in (("entropy", lambda q: h(q)), ("margin", lambda q: 1 - abs(q[0] - q[1]))):
        scores, probs = acquisition_scores(net, x, name)
        assert net.training
        assert torch.allclose(probs, p, atol=1e-6)
        assert scores.tolist() == pytest.approx([fn(row) for row in p.tolist()], rel=1e-5, abs=1e-7)
    # BALD: T seeded passes with dropout on (LeNet has no batch norm: train mode = dropout on)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    scores, _ = acquisition_scores(net, x, "bald", mc_samples=5, seed=42)
    assert torch.rand(1) == before  # the global random state is untouched
    torch.manual_seed(42)
    with torch.no_grad():
        passes = [torch.softmax(net(x), 1).tolist() for _ in range(5)]
    by_hand = []
    for b in range(len(x)):
        mean = [sum(passes[t][b][j] for t in range(5)) / 5 for j in range(2)]
        by_hand.append(h(mean) - sum(h(passes[t][b]) for t in range(5)) / 5)
    assert scores.tolist() == pytest.approx(by_hand, rel=1e-4, abs=1e-6)
    assert max(by_hand) > 1e-4  # the passes differ: dropout was on
    again, _ = acquisition_scores(net, x, "bald", mc_samples=5, seed=42)
    assert torch.equal(again, scores)
    assert not torch.equal(acquisition_scores(net, x, "bald", mc_samples=5, seed=43)[0], scores)
    # LeNet's passes rerun only its head on features computed once (dropout_in_head); the same network
    # seen as a whole (no head to rerun) draws the same masks and gives the same scores and probabilities
    whole = torch.nn.Sequential(net)
    assert not getattr(whole, "dropout_in_head", False)
    for model in (net, whole):
        s, probs = acquisition_scores(model, x, "bald", mc_samples=5, seed=42)
        assert torch.allclose(s, scores, atol=1e-9) and torch.allclose(probs, p, atol=1e-6) and net.training


def test_bald_needs_dropout_and_the_loop_says_so(tmp_path):
    with pytest.raises(ValueError, match="dropout"):
        mc_dropout_probs(tiny_net(0.0), torch.rand(2, 3, 16, 16), 4, 0)
    with pytest.raises(ValueError, match="set dropout > 0"):
        ActiveLearning(acquisition="bald", dropout=0.0, out_dir=str(tmp_path))
    with pytest.raises(
        ValueError, match="unknown acquisition 'coreset'; choose one of egl, entropy, margin, bald, random"
    ):
        ActiveLearning(acquisition="coreset", out_dir=str(tmp_path))
    assert ActiveLearning(acquisition="bald", out_dir=str(tmp_path)).options.dropout == 0.5  # its default
    assert ActiveLearning(acquisition="entropy", out_dir=str(tmp_path)).options.dropout == 0.0  # the paper's LeNet


def test_the_initial_patches_hold_both_classes_even_when_exudates_are_rare():
    labels = np.zeros(1000, np.int8)
    labels[::50] = 1  # 2% exudate patches
    pool = np.arange(1000)
    for seed in range(5):
        q = initial_patches(pool, 64, seed, labels)
        assert len(q.items) == 64 and len(set(q.items)) == 64
        assert int(labels[q.items].sum()) == 20  # every exudate patch there is (20 < 32), the rest healthy
    q = initial_patches(np.arange(200, 1000), 10, 0, labels)
    assert int(labels[q.items].sum()) == 5 and min(q.items) >= 200
    # labels unknown (a human oracle's grid): uniform, as before
    unknown = np.full(1000, -1, np.int8)
    assert initial_patches(pool, 64, 3, unknown).items == initial_patches(pool, 64, 3, None).items


def net_of(out, dropout: float = 0.0) -> LeNet:
    net = LeNet(2, TINY.patch_size, 3, (4, 8), 16, dropout)
    net.load_state_dict(torch.load(out / "model-round000.pt", weights_only=True)["model"])
    return net


@pytest.mark.parametrize("acquisition", ["entropy", "margin", "bald"])
def test_algorithm1_takes_the_top_k_of_each_strategy(synth_eophtha, tmp_path, acquisition):
    out = tmp_path / acquisition
    al = loop(
        synth_eophtha,
        out,
        acquisition=acquisition,
        select="patches",
        max_rounds=1,
        keep_checkpoints=True,
        track_images=0,
        score_batch_size=100_000,
        mc_samples=4,
    )
    assert al.run() == "finished"
    state = json.loads((out / "state.json").read_text())
    net = net_of(out, al.options.dropout)
    round0 = {row["item"] for row in state["history"] if row["round"] == 0}
    rest = [int(i) for i in al.data.pool_items if int(i) not in round0]
    x = al.pool.tensor(rest)
    with torch.no_grad():
        if acquisition == "bald":  # round 1's masks: seed (seed * 1000 + round) * 1_000_003, one batch from 0
            torch.manual_seed(1 * 1_000_003)
            net.train()
            passes = torch.stack([torch.softmax(net(x), 1) for _ in range(4)])
            scores = (entropy(passes.mean(0)) - entropy(passes).mean(0)).tolist()
        else:
            net.eval()
            p = torch.softmax(net(x), 1).tolist()
            scores = [h(q) if acquisition == "entropy" else 1 - abs(q[0] - q[1]) for q in p]
    phi = dict(zip(rest, scores, strict=True))
    round1 = [row for row in state["history"] if row["round"] == 1]
    assert_top({row["item"] for row in round1}, phi, 6)
    for row in round1:
        assert row["score"] == pytest.approx(phi[row["item"]], rel=1e-3, abs=1e-6)
    assert state["metrics"][1]["select_seconds"] > 0 and state["metrics"][0]["select_seconds"] == 0
    assert state["config"]["dropout"] == (0.5 if acquisition == "bald" else 0.0)


def test_algorithm2_with_entropy_opens_the_image_of_largest_summed_entropy(synth_eophtha, tmp_path):
    out = tmp_path / "run"
    al = loop(synth_eophtha, out, acquisition="entropy", max_rounds=1, k=3, track_images=0, keep_checkpoints=True)
    assert al.run() == "finished"
    state = json.loads((out / "state.json").read_text())
    net = net_of(out).eval()
    round0 = {row["item"] for row in state["history"] if row["round"] == 0}
    candidates = [i for i in al.data.split["train"] if set(al.data.items_of_image[i].tolist()) - round0]
    with torch.no_grad():
        sigma = {
            i: float(entropy(torch.softmax(net(al.pool.tensor(al.data.grid_of_image[i])), 1)).sum()) for i in candidates
        }
    best = max(sigma, key=sigma.get)
    assert state["labelled_images"] == sorted({int(al.pool.image[i]) for i in round0} | {best})
    assert state["metrics"][1]["selected_sigma"] == pytest.approx(sigma[best], rel=1e-3)
    own = [int(i) for i in al.data.items_of_image[best]]
    with torch.no_grad():
        ent = dict(zip(own, entropy(torch.softmax(net(al.pool.tensor(own)), 1)).tolist(), strict=True))
    assert_top({row["item"] for row in state["history"] if row["round"] == 1}, ent, 3)


def test_a_random_arm_matches_a_bald_run_without_dropout_of_its_own(synth_eophtha, tmp_path):
    kw = dict(select="patches", max_rounds=2, track_images=0, mc_samples=2)
    assert loop(synth_eophtha, tmp_path / "bald", acquisition="bald", **kw).run() == "finished"
    assert (
        loop(synth_eophtha, tmp_path / "random", acquisition="random", match_labels=str(tmp_path / "bald"), **kw).run()
        == "finished"
    )
    runs = {a: json.loads((tmp_path / a / "state.json").read_text()) for a in ("bald", "random")}
    assert [m["labels"] for m in runs["bald"]["metrics"]] == [m["labels"] for m in runs["random"]["metrics"]]
    assert runs["random"]["config"]["dropout"] == 0.0
    first = [{r["item"] for r in runs[a]["history"] if r["round"] == 0} for a in runs]
    assert first[0] == first[1]
    # a resumed run with another strategy is refused (the acquisition is frozen)
    with pytest.raises(ValueError, match="acquisition"):
        loop(synth_eophtha, tmp_path / "bald", acquisition="margin", **kw).run(resume=True)


def test_a_grid_pool_tests_on_every_grid_patch_of_the_test_photographs(synth_eophtha, tmp_path):
    from retinalab.active.pool import GRID

    al = loop(
        synth_eophtha,
        tmp_path / "grid",
        pool_kind="grid",
        eval_kind="grid",
        select="patches",
        max_rounds=0,
        track_images=0,
    )
    assert al.run() == "finished"
    labels, kind, image = (np.asarray(getattr(al.pool, n)) for n in ("labels", "kind", "image"))
    for name in ("val", "test"):
        expected = np.flatnonzero(np.isin(image, al.data.split[name]) & (kind == GRID) & (labels >= 0))
        assert np.array_equal(np.sort(al.data.eval_items[name]), expected)
    test = al.data.eval_items["test"]
    assert 0 < labels[test].mean() < 0.5  # exudates a minority, as in the photographs
    assert set(al.data.pool_items.tolist()) <= set(
        np.flatnonzero(np.isin(image, al.data.split["train"]) & (kind == GRID)).tolist()
    )
    state = json.loads((tmp_path / "grid" / "state.json").read_text())
    first = state["history"]
    assert sum(r["label"] for r in first) == len(first) // 2  # the initial draw: half exudate patches
    # the paper's balanced centred test patches stay the default
    # the operating point on the validation patches, and the test F-measure there, beside the F at 0.5
    from retinalab.active.learner import best_f1_threshold
    from retinalab.active.store import read_metrics

    row = read_metrics(tmp_path / "grid" / "metrics.csv")[0]
    with torch.no_grad():
        al.learner.net.eval()
        p = {n: torch.softmax(al.learner.net(al.pool.tensor(al.data.eval_items[n])), 1)[:, 1] for n in ("val", "test")}
    y = {n: torch.from_numpy(labels[al.data.eval_items[n]]) for n in ("val", "test")}
    t = best_f1_threshold(p["val"], y["val"])
    assert row["val/threshold"] == pytest.approx(t, rel=1e-5)
    pred = p["test"] >= t
    tp = int((pred & (y["test"] == 1)).sum())
    assert row["test/f1_tuned"] == pytest.approx(2 * tp / (int(pred.sum()) + int(y["test"].sum())), abs=1e-6)
    assert row["test/sensitivity_tuned"] == pytest.approx(tp / int(y["test"].sum()), abs=1e-6)
    centred = loop(
        synth_eophtha, tmp_path / "centred", pool_kind="grid", select="patches", max_rounds=0, track_images=0
    )
    centred.run()
    assert (
        labels[centred.data.eval_items["test"]].mean() == 0.5 and (kind[centred.data.eval_items["test"]] != GRID).all()
    )


def test_the_benchmark_compares_strategies_by_labels_to_the_target_then_by_area():
    import runpy
    import sys

    from tests.helpers.paths import REPO

    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))  # as when the script runs
    bench = runpy.run_path(str(REPO / "benchmarks" / "_active_report.py"), run_name="bench_al")
    rows = [{"labels": 64.0, "test/f1": 0.5}, {"labels": 96.0, "test/f1": 0.82}, {"labels": 128.0, "test/f1": 0.95}]
    assert bench["labels_to_reach"](rows, 0.8) == 96.0 and bench["labels_to_reach"](rows, 0.9) == 128.0
    assert math.isnan(bench["labels_to_reach"](rows, 0.99))
    ahead = bench["compare"]("egl", [96.0, 100.0], [160.0, 170.0], [0.8, 0.8], [0.7, 0.7], 300.0)
    assert ahead == "ahead of random: 98 vs 165 labels (+41% fewer), seed spread 5; area +0.100"
    assert bench["compare"]("egl", [96.0, 160.0], [128.0, 128.0], [0.8] * 2, [0.7] * 2, 300.0).startswith(
        "level with random"
    )  # within the spread
    assert bench["compare"]("egl", [200.0, 210.0], [100.0, 110.0], [0.6] * 2, [0.7] * 2, 300.0).startswith(
        "behind random"
    )
    # a seed that never reaches the target within the budget counts as the budget: a lower bound, marked
    censored = bench["compare"]("egl", [100.0, 110.0], [200.0, math.nan], [0.7, 0.72], [0.60, 0.61], 300.0)
    assert censored.startswith("ahead of random: 105 vs >=250 labels (+58% fewer), seed spread 50")
    assert "not reached on 0 (random 1) of 2 seeds, counted as 300" in censored


def test_balanced_class_weights_give_each_class_the_same_total_weight():
    from torch.nn import functional as F

    from retinalab.active.learner import balanced_weights, sgd_epochs

    y = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    w = balanced_weights(y)
    assert w.tolist() == pytest.approx([8 / 12, 8 / 4])
    assert float((w[y]).sum()) == pytest.approx(len(y)) and float(w[0] * 6) == pytest.approx(float(w[1] * 2))
    assert balanced_weights(torch.tensor([0, 0, 1, 1])).tolist() == pytest.approx([1.0, 1.0])
    assert balanced_weights(torch.tensor([0, 0, 0])).tolist() == pytest.approx([1.0, 0.0])
    # sgd_epochs minimises the weighted cross-entropy: one batch of everything, the loss it reports
    net = tiny_net(0.0)
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = float(F.cross_entropy(net(x), y, weight=w))
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    loss = sgd_epochs(
        net,
        opt,
        lambda t: t.backward(),
        x,
        y,
        epochs=1,
        batch_size=8,
        variants=1,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
        class_weight=w,
    )
    assert loss == pytest.approx(expected, rel=1e-5)
    assert loss != pytest.approx(float(F.cross_entropy(net(x), y)), rel=1e-3)


def test_entropy_and_margin_rank_a_two_class_pool_identically_even_near_one_half():
    """Both are decreasing in |p - 0.5|; in float32 entropy (ln 2 - 2e^2) ties where margin does not."""
    e = torch.tensor([1e-5, 3e-5, 5e-5, 8e-5, 2e-4, 0.3, 0.49999])
    p = torch.stack([0.5 - e, 0.5 + e], 1).float()
    order = lambda s: torch.argsort(-s, stable=True).tolist()  # noqa: E731
    assert order(entropy(p)) == order(margin(p)) == list(range(7))
    assert len(set(entropy(p).tolist())) == 7  # no ties


def test_the_validation_threshold_maximises_the_f_measure_by_hand():
    from retinalab.active.learner import best_f1_threshold

    def f1_at(p, y, t):
        pred = p >= t
        tp = int((pred & (y == 1)).sum())
        return 2 * tp / (int(pred.sum()) + int(y.sum()))

    # 0.5 would call nothing an exudate (F 0); the positives rank above the negatives but for one
    p = torch.tensor([0.30, 0.28, 0.05, 0.29, 0.10, 0.02, 0.01, 0.40])
    y = torch.tensor([1, 1, 0, 0, 1, 0, 0, 1])
    assert f1_at(p, y, 0.5) == 0.0
    t = best_f1_threshold(p, y)
    # by hand: 0.40 -> 2/5, 0.30 -> 4/6, 0.29 -> 4/7, 0.28 -> 6/8, 0.10 -> 8/9, 0.05 -> 8/10
    assert t == pytest.approx(0.10) and f1_at(p, y, t) == pytest.approx(8 / 9)
    for _ in range(20):  # against every candidate on random data with ties
        g = torch.Generator().manual_seed(_)
        p = torch.randint(0, 12, (40,), generator=g).double() / 12
        y = (torch.rand(40, generator=g) < 0.2).long()
        if not y.sum():
            continue
        best = max(f1_at(p, y, float(c)) for c in p.unique())
        t = best_f1_threshold(p, y)
        assert f1_at(p, y, t) == pytest.approx(best)
        assert t == max(
            float(c) for c in p.unique() if f1_at(p, y, float(c)) == pytest.approx(best)
        )  # ties: the most specific
    assert best_f1_threshold(torch.tensor([0.2, 0.9]), torch.tensor([0, 0])) == 0.5  # no positive: the usual 0.5
