"""Selection rules of paper 002's Algorithms 1 and 2, and the random baseline."""

from __future__ import annotations

import pytest
import torch

from retinalab.active import image_interestingness, select_images, select_random, select_top_k


def test_top_k_picks_the_highest_scores_and_skips_labelled():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.3, 0.7])
    assert select_top_k(scores, 3) == [1, 3, 5]  # ties broken by index
    assert select_top_k(scores, 2, exclude={1, 5}) == [3, 2]
    assert select_top_k(scores, 10, exclude={0}) == [1, 3, 5, 2, 4]
    assert select_top_k(scores, 0) == []


def test_top_k_matches_a_full_sort_on_a_large_pool():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(10_000, generator=g)
    picked = select_top_k(scores, 50)
    assert picked == torch.argsort(scores, descending=True)[:50].tolist()


def test_algorithm2_picks_the_image_with_the_largest_sum_not_the_largest_patch():
    # image 7 has the single largest patch score, image 3 the largest sum
    phi = torch.tensor([5.0, 0.1, 0.1, 2.0, 2.0, 2.0, 0.5, 0.5])
    img = torch.tensor([7, 7, 7, 3, 3, 3, 9, 9])
    assert image_interestingness(phi, img) == pytest.approx({3: 6.0, 7: 5.2, 9: 1.0})
    assert select_images(phi, img) == [3]
    assert select_images(phi, img, n=2, exclude={3}) == [7, 9]


def test_random_selection_is_seeded_and_respects_the_pool():
    a = select_random(100, 10, seed=1, exclude=range(50))
    assert a == select_random(100, 10, seed=1, exclude=range(50))
    assert a != select_random(100, 10, seed=2, exclude=range(50))
    assert len(a) == 10 and min(a) >= 50
    assert select_random(5, 10, seed=0) == [0, 1, 2, 3, 4]


def test_top_k_ignores_exclusions_outside_the_pool_and_breaks_large_ties_by_index():
    scores = torch.tensor([0.2, 0.8, 0.5])
    assert select_top_k(scores, 2, exclude={3, -1, 99}) == [1, 2]  # 3 == len(scores): not an index
    ties = torch.ones(5_000)
    assert select_top_k(ties, 4, exclude={1}) == [0, 2, 3, 4]  # lower index first, also where a sort is not stable


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="k must be >= 0, got -1"):
        select_top_k(torch.zeros(3), -1)
    with pytest.raises(ValueError, match="3 scores but 2 image indices"):
        image_interestingness(torch.zeros(3), torch.zeros(2))


def test_random_selection_returns_python_ints_usable_as_indices():
    picked = select_random(20, 5, seed=0, exclude=[1, 2, 3])
    assert all(type(i) is int for i in picked) and not {1, 2, 3} & set(picked)
