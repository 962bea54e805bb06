"""Split reproducibility, disjointness, patient grouping, nested labelled subsets."""

from __future__ import annotations

import pytest

from retinalab.datamodules import choose_labeled, split_indices


def groups_of(n: int, per: int = 2) -> list[str]:
    return [f"p{i // per}" for i in range(n)]


def test_split_is_reproducible_and_disjoint():
    g = groups_of(100, 1)
    a = split_indices(g, 20, 30, seed=3)
    assert a == split_indices(g, 20, 30, seed=3)
    assert a != split_indices(g, 20, 30, seed=4)
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (50, 20, 30)
    assert sorted(a["train"] + a["val"] + a["test"]) == list(range(100))


def test_split_never_puts_a_patient_in_two_parts():
    g = groups_of(90, 3)
    parts = split_indices(g, 0.2, 0.2, seed=0)
    owner = {}
    for name, idx in parts.items():
        for i in idx:
            assert owner.setdefault(g[i], name) == name
    assert sum(len(v) for v in parts.values()) == 90


def test_stratified_split_keeps_both_classes():
    g = groups_of(40, 1)
    strata = [1] * 8 + [0] * 32
    for seed in range(10):
        parts = split_indices(g, 10, 10, seed, strata=strata)
        for name in ("val", "test"):
            labels = {strata[i] for i in parts[name]}
            assert labels == {0, 1}, (seed, name)


def test_official_split_uses_the_dataset_test_set():
    g = groups_of(20, 1)
    official = ["train"] * 15 + ["test"] * 5
    parts = split_indices(g, 3, 999, seed=0, official=official)
    assert parts["test"] == list(range(15, 20))
    assert len(parts["val"]) == 3 and not set(parts["val"]) & set(parts["test"])


def test_paper000_sizes():
    parts = split_indices(groups_of(249, 1), 50, 50, seed=0, strata=[1] * 81 + [0] * 168)
    assert (len(parts["train"]), len(parts["val"]), len(parts["test"])) == (149, 50, 50)


def test_split_without_training_data_is_refused():
    with pytest.raises(ValueError, match="no training data"):
        split_indices(groups_of(6, 1), 3, 3, seed=0)


def test_labelled_subsets_are_nested_and_seeded():
    cands = list(range(100, 249))
    l10, rest10 = choose_labeled(cands, 10, seed=1)
    l40, _ = choose_labeled(cands, 40, seed=1)
    assert len(l10) == 10 and set(l10) <= set(l40)
    assert set(l10).isdisjoint(rest10) and len(rest10) == 139
    assert choose_labeled(cands, 10, seed=2)[0] != l10
    assert len(choose_labeled(cands, 0.1, seed=1)[0]) == 15
    assert choose_labeled(cands, None, seed=1) == (cands, [])
    with pytest.raises(ValueError, match="only 149"):
        choose_labeled(cands, 150, seed=1)
