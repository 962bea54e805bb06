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
