"""PatchDataModule, GradingDataModule and SegmentationDataModule on fake layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from retinalab.datamodules import GradingDataModule, PatchDataModule, SegmentationDataModule
from tests.data.idrid.data import make_idrid
from tests.helpers.cli import fit_refused

SMALL = dict(image_size=64, patch_size=16, stride=16, patch_out=8, batch_size=32)


@pytest.fixture
def big_idrid(tmp_path):
    # 10 segmentation images (diseased) + 8 grade-0 and 4 graded (unknown patch labels) grading images
    return make_idrid(tmp_path / "IDRiD", seg=(7, 3), grades={"train": [0, 0, 0, 0, 0, 2, 3], "test": [0, 0, 0, 4, 1]})


def make_dm(root, tmp_path, **kw):
    args = dict(
        dataset="idrid",
        root=str(root),
        cache_dir=str(tmp_path / "cache"),
        cache_workers=0,
        val_size=4,
        test_size=4,
        split_file=str(tmp_path / "split.json"),
        **SMALL,
    )
    args.update(kw)
    return PatchDataModule(**args)


def test_patch_datamodule_paper000_selection_and_split_file(big_idrid, tmp_path):
    dm = make_dm(big_idrid, tmp_path, num_labeled_images=4, seed=1)
    dm.prepare_data()
    dm.setup("fit")
    s = dm.summary()
    # 10 segmentation + 8 grade-0 images have patch labels; graded DR images without masks do not
    assert s["train"]["images"] + s["val"]["images"] + s["test"]["images"] == 18
    # the unlabelled stream is every training image (unlabeled_pool: all, as in Salimans et al.'s code)
    assert s["labeled"]["images"] == 4 and s["unlabeled"]["images"] == s["train"]["images"] == 10
    split = json.loads((tmp_path / "split.json").read_text())
    assert set(split["unlabeled"]) == set(split["train"]) and set(split["labeled"]) < set(split["train"])
    assert split["unlabeled_pool"] == "all"
    assert not set(split["train"]) & set(split["val"]) and not set(split["val"]) & set(split["test"])
    assert not any("grading/train/IDRiD_006" == i for k in ("train", "val", "test") for i in split[k])
    assert split["hash"] == dm.split_hash
    # same seed -> same split; other seed -> another one
    dm2 = make_dm(big_idrid, tmp_path, num_labeled_images=4, seed=1, split_file=str(tmp_path / "s2.json"))
    dm2.setup("fit")
    assert dm2.split_hash == dm.split_hash
    dm3 = make_dm(big_idrid, tmp_path, num_labeled_images=4, seed=2, split_file=str(tmp_path / "s3.json"))
    dm3.setup("fit")
    assert dm3.split_hash != dm.split_hash


def test_unlabeled_pool_rest_keeps_labelled_images_out_of_the_unlabelled_stream(big_idrid, tmp_path):
    rest = make_dm(big_idrid, tmp_path, num_labeled_images=4, seed=1, unlabeled_pool="rest")
    rest.setup("fit")
    everything = make_dm(big_idrid, tmp_path, num_labeled_images=4, seed=1, split_file=str(tmp_path / "all.json"))
    everything.setup("fit")
    # same split and labelled images; only the unlabelled pool differs
    assert np.array_equal(rest.rows["labeled"], everything.rows["labeled"])
    assert np.array_equal(everything.rows["unlabeled"], everything.rows["train"])
    assert sorted([*rest.rows["labeled"], *rest.rows["unlabeled"]]) == sorted(rest.rows["train"])
    assert not set(rest.rows["labeled"]) & set(rest.rows["unlabeled"])
    # a value outside the option's choices is the parser's to refuse: one line naming the option and them
    assert fit_refused(big_idrid, tmp_path, "--data.unlabeled_pool=others") == (
        "error: --data.unlabeled_pool: expected 'all' or 'rest', got 'others'."
    )


def test_every_image_labelled_still_feeds_the_unlabelled_stream(big_idrid, tmp_path):
    """Paper 000's 149/149 column: with unlabeled_pool 'all' the SSL-GAN trains with every image
    labelled; with 'rest' that is refused with a message that names the fix."""
    dm = make_dm(big_idrid, tmp_path, num_labeled_images=None, unlabeled=True)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    batch = batch[0] if isinstance(batch, tuple) else batch
    assert len(batch["unlabeled"]["image"]) == 32 and (batch["unlabeled"]["label"] == -1).all()
    dm = make_dm(big_idrid, tmp_path, num_labeled_images=None, unlabeled=True, unlabeled_pool="rest")
    with pytest.raises(ValueError, match="unlabeled_pool: all"):
        dm.setup("fit")  # refused before split.json is written
    assert not (tmp_path / "split.json").exists() or dm.rows["labeled"].size  # the first module wrote it, not this one


def test_batches_per_epoch_cycles_the_labelled_patches(big_idrid, tmp_path):
    """Equal compute: the supervised baseline's epoch as long as one pass over the unlabelled pool."""
    dm = make_dm(big_idrid, tmp_path, num_labeled_images=2, batch_size=8, batches_per_epoch="unlabeled")
    dm.setup("fit")
    loader = dm.train_dataloader()
    # 10 training images x 16 patches in the unlabelled pool, batches of 8 -> 20 batches per epoch
    assert len(loader) == 20 == dm.train_batches_per_epoch()
    seen = torch.cat([b["image_index"] * 100 + b["patch_index"] for b in loader])
    assert len(seen) == 160
    # the 32 labelled patches, each served 5 times (successive permutations), nothing else
    keys, counts = torch.unique(seen, return_counts=True)
    assert set((keys // 100).tolist()) == set(dm.rows["labeled"].tolist()) and len(keys) == 32 and (counts == 5).all()
    fixed = make_dm(big_idrid, tmp_path, num_labeled_images=2, batch_size=8, batches_per_epoch=3)
    fixed.setup("fit")
    assert len(fixed.train_dataloader()) == 3
    default = make_dm(big_idrid, tmp_path, num_labeled_images=2, batch_size=8)
    default.setup("fit")
    assert len(default.train_dataloader()) == 4  # one pass over 32 labelled patches
    for bad in (0, -2):
        with pytest.raises(ValueError, match="batches_per_epoch"):
            make_dm(big_idrid, tmp_path, batches_per_epoch=bad)
    for bad in ("1.5", "steps"):  # not an int, 'unlabeled' or None: the parser's to refuse, in one line
        assert fit_refused(big_idrid, tmp_path, f"--data.batches_per_epoch={bad}") == (
            f"error: --data.batches_per_epoch: expected int, 'unlabeled' or None, got '{bad}'."
        )


def test_labelled_batches_and_hidden_unlabelled_labels(big_idrid, tmp_path):
    dm = make_dm(big_idrid, tmp_path, num_labeled_images=3, unlabeled=True, unlabeled_pool="rest")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    batch = batch[0] if isinstance(batch, tuple) else batch
    assert set(batch) == {"labeled", "unlabeled"}
    lab, unl = batch["labeled"], batch["unlabeled"]
    assert lab["image"].shape == (32, 3, 8, 8) and lab["image"].dtype == torch.float32
    assert 0 <= lab["image"].min() and lab["image"].max() <= 1
    assert set(lab["label"].tolist()) <= {0, 1}
    assert (unl["label"] == -1).all() and (unl["fraction"] == 0).all()  # labels never reach the model
    labeled_rows = set(dm.rows["labeled"].tolist())
    assert set(lab["image_index"].tolist()) <= labeled_rows
    assert not set(unl["image_index"].tolist()) & labeled_rows


def test_val_patches_cover_whole_images_in_order(big_idrid, tmp_path):
    dm = make_dm(big_idrid, tmp_path)
    dm.setup("fit")
    loader = dm.val_dataloader()
    idx = torch.cat([b["image_index"] for b in loader])
    assert len(idx) == 4 * 16
    assert torch.equal(idx, torch.as_tensor(np.repeat(dm.rows["val"], 16)))
    labels = torch.cat([b["label"] for b in loader]).view(4, 16)
    assert torch.equal(labels, torch.as_tensor(dm.cache.labels[dm.rows["val"]]).long())


def test_include_unknown_adds_only_to_the_unlabelled_pool(big_idrid, tmp_path):
    dm = make_dm(big_idrid, tmp_path, include_unknown=True, num_labeled_images=2)
    dm.setup("fit")
    ids = dm.image_ids(dm.rows["unlabeled"])
    assert "grading/train/IDRiD_006" in ids  # grade 3, no masks
    for part in ("val", "test", "labeled"):
        assert all(dm.cache.image_labels[i] >= 0 for i in dm.rows[part])


def test_patch_datamodule_without_patch_labels_is_refused(eyepacs_root, tmp_path):
    dm = make_dm(eyepacs_root, tmp_path, dataset="eyepacs", grade0_healthy=False)
    with pytest.raises(ValueError, match="no image has patch labels"):
        dm.setup("fit")


def test_grading_binary_views(eyepacs_root, tmp_path):
    dm = GradingDataModule(
        "eyepacs",
        str(eyepacs_root),
        target="referable",
        image_size=64,
        val_size=2,
        batch_size=4,
        num_workers=0,
        split_file=str(tmp_path / "g.json"),
    )
    dm.setup("fit")
    assert len(dm.parts["test"]) == 4 and dm.num_classes == 2
    patients = lambda part: {r.patient_id for r in dm.parts[part]}  # noqa: E731
    assert not patients("train") & patients("val")
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (4, 3, 64, 64)
    grades = {"test/1_left": 0, "test/1_right": 1, "test/2_left": 2, "test/2_right": 2}
    assert batch["label"].tolist() == [int(grades[i] >= 2) for i in batch["image_id"]]
    normal = GradingDataModule(
        "eyepacs",
        str(eyepacs_root),
        target="normal",
        image_size=64,
        num_workers=0,
        val_size=2,
        split_file=str(tmp_path / "n.json"),
    )
    normal.setup("fit")
    b = next(iter(normal.test_dataloader()))
    assert b["label"].tolist() == [int(grades[i] == 0) for i in b["image_id"]]
    assert normal.summary()["test"] == {"label_0": 3, "label_1": 1, "images": 4}
    assert GradingDataModule("messidor", "x").num_classes == 4


def test_segmentation_datamodule_with_image_level_set(idrid_root, tmp_path):
    dm = SegmentationDataModule(
        "idrid",
        str(idrid_root),
        image_size=64,
        val_size=1,
        batch_size=2,
        num_workers=0,
        image_level_dataset="idrid",
        image_level_root=str(idrid_root),
        augment=False,
        image_level_val_size=1,
        split_file=str(tmp_path / "seg.json"),
    )
    dm.setup("fit")
    # IDRiD grading's official test split (2 images) is the image-level test set; 1 of its 4 training images validates
    assert len(dm.parts["test"]) == 2 and len(dm.parts["image_level"]) == 3
    assert len(dm.parts["image_level_val"]) == 1 and len(dm.parts["image_level_test"]) == 2
    assert {r.split for r in dm.parts["image_level_test"]} == {"test"}
    val_pixel, val_image = dm.val_dataloader()
    assert "mask" in next(iter(val_pixel)) and "mask" not in next(iter(val_image))
    # evaluation images carry each pixel's lesion share too (what the pixel AUCs weigh), training ones do not
    test = next(iter(dm.test_dataloader()[0]))
    assert torch.equal(test["mask_fraction"] > 0, test["mask"] > 0)
    small = SegmentationDataModule(
        "idrid", str(idrid_root), image_size=24, val_size=1, num_workers=0, split_file=str(tmp_path / "s.json")
    )
    small.setup("test")  # shrunk masks: fractions between 0 and 1, less lesion area than the any-pixel mask
    test = next(iter(small.test_dataloader()))
    frac, known = test["mask_fraction"], test["mask_known"]
    assert frac.dtype == torch.float32 and torch.equal(frac > 0, test["mask"] > 0)
    assert 0 < frac[known].sum() < test["mask"][known].sum() and ((frac > 0) & (frac < 1)).any()
    batch = next(iter(dm.train_dataloader()))
    batch = batch[0] if isinstance(batch, tuple) else batch
    pixel = batch["pixel"]
    assert "mask_fraction" not in pixel
    assert pixel["mask"].shape == (2, 4, 64, 64) and pixel["mask_known"].all()
    assert pixel["mask"][:, 0].sum() > 0  # microaneurysm planted in every image
    assert "mask" not in batch["image"] and batch["image"]["image"].shape[1:] == (3, 64, 64)


def test_grading_undecodable_image_raises_or_is_skipped(eyepacs_root, tmp_path):
    from retinalab.datasets import DataFormatError

    (eyepacs_root / "test" / "1_right.jpeg").write_bytes(b"not a jpeg")
    kw = dict(image_size=64, val_size=2, batch_size=4, num_workers=0, augment=False)
    dm = GradingDataModule("eyepacs", str(eyepacs_root), split_file=str(tmp_path / "a.json"), **kw)
    dm.setup("test")
    with pytest.raises(DataFormatError, match="1_right.jpeg: cannot decode"):
        next(iter(dm.test_dataloader()))
    dm = GradingDataModule("eyepacs", str(eyepacs_root), on_error="skip", split_file=str(tmp_path / "b.json"), **kw)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["image_id"] == ["test/1_left", "test/2_left", "test/2_right"]


def test_resumed_prediction_leaves_written_images_out(eyepacs_root, tmp_path):
    """A prediction writer's ``done`` set (images already in its CSV) shrinks the predict dataset."""
    from types import SimpleNamespace

    from retinalab.lightning import LesionMapWriter

    dm = GradingDataModule(
        "eyepacs",
        str(eyepacs_root),
        image_size=64,
        val_size=2,
        batch_size=4,
        num_workers=0,
        split_file=str(tmp_path / "g.json"),
    )
    dm.setup("predict")
    assert len(dm.predict_dataloader().dataset) == 4
    writer = LesionMapWriter()
    writer.done = {"test/1_left", "test/2_right"}
    dm.trainer = SimpleNamespace(callbacks=[writer])
    ids = [r.image_id for r in dm.predict_dataloader().dataset.records]
    assert ids == ["test/1_right", "test/2_left"]


def test_labelled_and_unlabelled_patches_are_augmented_with_streams_of_their_own(big_idrid, tmp_path):
    """The SSL-GAN's two training loaders: with one seed for both, the labelled and the unlabelled
    batches were cropped and flipped alike, draw for draw; now each loader draws its own."""
    dm = make_dm(big_idrid, tmp_path, num_labeled_images=4, seed=1, unlabeled=True)
    dm.prepare_data()
    dm.setup("fit")
    loaders = dm.train_dataloader().iterables
    labelled, unlabelled = loaders["labeled"].dataset.transform, loaders["unlabeled"].dataset.transform
    patch = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    a = [labelled(image=patch)["image"] for _ in range(20)]
    b = [unlabelled(image=patch)["image"] for _ in range(20)]
    assert sum(not np.array_equal(x, y) for x, y in zip(a, b, strict=True)) >= 10


def test_the_split_is_logged_as_one_readable_line():
    from retinalab.datamodules.base import describe_counts

    part = {"images_healthy": 4, "patches_healthy": 487}
    line = describe_counts(
        {
            "train": {"images": 23, "images_diseased": 13, "patches": 1472, "patches_diseased": 279, **part},
            "labeled": {"images": 10, "images_diseased": 6, "patches": 640, "patches_diseased": 153, **part},
        }
    )
    assert line == (
        "train 23 photographs (13 with lesions), 1472 patches (279 diseased); "
        "labelled 10 photographs (6 with lesions), 640 patches (153 diseased)"
    )
