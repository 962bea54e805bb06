"""EGL-chosen labelled images (paper 002's Algorithm 2 on paper 000's patch data), as a study axis."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from retinalab.active.image_selection import EGLChooser, cached_egl_order, egl_image_order
from retinalab.cli import main
from retinalab.datamodules import PatchDataModule
from tests.helpers.cli import fit_refused
from tests.helpers.egl_by_hand import phi_by_hand
from tests.helpers.paths import REPO


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    from retinalab.synthetic import write_synthetic

    tmp = tmp_path_factory.mktemp("eglsel")
    syn = write_synthetic("idrid", tmp / "syn", 30, 4, (128, 96), 1.0, 1.0, 1)
    d = PatchDataModule(
        "idrid",
        str(syn),
        image_size=128,
        patch_size=32,
        stride=32,
        val_size=3,
        test_size=3,
        cache_dir=str(tmp / "cache"),
        cache_workers=0,
        split_file=str(tmp / "s.json"),
    )
    d.setup("fit")
    return d


def test_egl_order_is_deterministic_nested_and_follows_algorithm_2(dm, monkeypatch):
    train = list(dm.rows["train"])
    long = egl_image_order(dm.cache, train, 5, seed=1, epochs=1)
    assert len(long) == len(set(long)) == 5 and set(long) <= set(int(t) for t in train)
    assert egl_image_order(dm.cache, train, 3, seed=1, epochs=1) == long[:3]  # nested across counts
    assert egl_image_order(dm.cache, train, 5, seed=1, epochs=1) == long
    # after the 2 random images, each pick is the unlabelled image whose patches sum to the largest EGL,
    # with Eq. 1 written out here (autograd per patch and class over fc1/fc2) on the model of that round
    import copy

    import retinalab.active.image_selection as sel

    scored: dict = {"images": []}  # what this round scored (in one or more calls), with which model
    rounds = []
    real_score, real_select = sel._score_images, sel.select_images

    def score(model, cache, images, batch=1024):
        scored["model"] = copy.deepcopy(model)
        scored["images"] += list(images)
        return real_score(model, cache, images, batch)

    def select(phi, owner, n):
        rounds.append((scored["model"], scored["images"], real_select(phi, owner, n)))
        scored["images"] = []
        return rounds[-1][2]

    monkeypatch.setattr(sel, "_score_images", score)
    monkeypatch.setattr(sel, "select_images", select)
    order = egl_image_order(dm.cache, train, 4, seed=1, epochs=1)
    assert len(rounds) == 2 and order[2:] == [pick[0] for _, _, pick in rounds]
    labelled = set(order[:2])
    for model, images, pick in rounds:
        assert set(images) == {int(t) for t in train} - labelled  # every unlabelled candidate, and only those
        sigma = {}
        for img in images:
            x = torch.from_numpy(np.asarray(dm.cache.patches[img])).permute(0, 3, 1, 2).float().div(255)
            sigma[img] = float(phi_by_hand(model, x).sum())
        ranked = sorted(sigma, key=sigma.get, reverse=True)
        assert pick == ranked[:1] and sigma[ranked[0]] > sigma[ranked[1]] * (1 + 1e-4)
        labelled |= set(pick)


def test_cached_orders_are_reused(dm):
    train = list(dm.rows["train"])
    before = set((dm.cache.path / "egl_orders").glob("*.json"))  # other tests of this module share the cache
    order = cached_egl_order(dm.cache, train, 4, seed=2, epochs=1)
    files = list(set((dm.cache.path / "egl_orders").glob("*.json")) - before)
    assert len(files) == 1 and json.loads(files[0].read_text()) == order
    assert cached_egl_order(dm.cache, train, 3, seed=2, epochs=1) == order[:3]


def test_patch_datamodule_labels_the_egl_order(dm, tmp_path):
    egl_dm = PatchDataModule(
        dm.dataset,
        dm.root,
        image_size=128,
        patch_size=32,
        stride=32,
        val_size=3,
        test_size=3,
        num_labeled_images=4,
        labeled_selection=EGLChooser(epochs=1),
        cache_dir=str(dm.cache.path.parent),
        cache_workers=0,
        split_file=str(tmp_path / "e.json"),
    )
    egl_dm.setup("fit")
    expected = cached_egl_order(egl_dm.cache, list(egl_dm.rows["train"]), 4, 0, initial=2, step=1, epochs=1)
    assert sorted(egl_dm.rows["labeled"].tolist()) == sorted(expected)
    assert set(egl_dm.rows["labeled"].tolist()) < set(egl_dm.rows["train"].tolist())
    assert np.array_equal(egl_dm.rows["unlabeled"], np.sort(egl_dm.rows["train"]))  # unlabeled_pool: all
    assert json.loads((tmp_path / "e.json").read_text())["labeled_selection"] == "egl"
    # anything but a chooser class is the parser's to refuse, in one line naming the option
    assert fit_refused(dm.root, tmp_path, "--data.labeled_selection=uncertainty") == (
        "error: --data.labeled_selection: expected the import path of a class (package.module.ClassName), got "
        "'uncertainty'."
    )


def test_study_with_egl_selection(dm, tmp_path):
    cfg = {
        "name": "egl",
        "out_dir": str(tmp_path / "study"),
        "methods": {"convnet": str(REPO / "tests/conf/convnet_tiny.yaml")},
        "labelled": [4],
        "seeds": [0],
        "selection": "egl",
        "overrides": [
            f"--data.root={dm.root}",
            f"--data.cache_dir={dm.cache.path.parent}",
            "--data.labeled_selection.epochs=1",
            "--trainer.enable_progress_bar=false",
        ],
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["study", "--config", str(tmp_path / "s.yaml")]) == 0
    split = json.loads((tmp_path / "study/cells/convnet/n4_s0/split.json").read_text())
    assert split["labeled_selection"] == "egl" and len(split["labeled"]) == 4


def test_candidates_are_scored_a_few_images_at_a_time(dm, monkeypatch):
    """Memory holds one batch of patches, not every candidate's: 10,000 images x 64 patches would be 8 GB."""
    import retinalab.active.image_selection as sel
    from retinalab.active import egl
    from retinalab.models.lenet import LeNet

    real = sel._patches
    sizes: list[int] = []
    monkeypatch.setattr(sel, "_patches", lambda cache, images: (sizes.append(len(images)), real(cache, images))[1])
    torch.manual_seed(0)
    model = LeNet(2, dm.cache.grid.out_size, 3, (20, 50), 500)
    rest = sorted(int(t) for t in dm.rows["train"])
    per_image = dm.cache.patches.shape[1]
    phi, owner = sel._score_images(model, dm.cache, rest, batch=2 * per_image + 1)
    assert max(sizes) == 2 and sum(sizes) == len(rest) > 2
    x, _, everyone = real(dm.cache, rest)
    assert torch.equal(owner, everyone) and torch.allclose(phi, egl(model, x, "fc")[0], rtol=1e-5)
