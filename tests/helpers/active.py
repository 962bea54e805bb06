"""The active-learning tests' tiny runs: a synthetic e-ophtha layout, a CPU-sized loop, and the check that a
round took the top-k patches of a score."""

from __future__ import annotations

from pathlib import Path

import pytest

from retinalab.active import ActiveLearning, ExudatePatchConfig
from retinalab.synthetic import write_synthetic

TINY = ExudatePatchConfig(
    image_size=128, patch_size=16, exudate_per_image=12, healthy_per_image=12, grid_stride=16, view_size=128
)


@pytest.fixture(scope="module")
def synth_eophtha(tmp_path_factory):
    """A synthetic e-ophtha layout (the generator is a product feature): 20 EX-part images."""
    return write_synthetic(
        "eophtha", tmp_path_factory.mktemp("syn") / "e-ophtha", 40, 3, (256, 170), 1.5, 1.0, 1, False
    )


def loop(root, out, **kw) -> ActiveLearning:
    args = dict(
        dataset="eophtha",
        root=str(root),
        reader_args={"parts": ["EX"]},
        patches=TINY,
        out_dir=str(out),
        k=6,
        initial_batches=2,
        initial_images=2,
        batch_size=8,
        conv_channels=(4, 8),
        hidden=16,
        max_rounds=3,
        val_size=0.25,
        test_size=0.25,
        cache_dir=str(Path(out).parent / "cache"),
        accelerator="cpu",
        progress=False,
        track_images=2,
        plot_every=0,  # plots (most of a round's time) only when a run stops, unless a test asks
    )
    args.update(kw)
    return ActiveLearning(**args)


def assert_top(chosen: set[int], phi: dict[int, float], k: int) -> None:
    """``chosen`` are ``k`` items of highest ``phi`` (up to float noise between near-equal scores)."""
    assert len(chosen) == k
    rest = [v for i, v in phi.items() if i not in chosen]
    assert min(phi[i] for i in chosen) >= max(rest, default=-1.0) * (1 - 1e-4)
