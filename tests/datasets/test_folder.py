"""The generic "bring your own data" layout: reading, errors, and every method training on it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from retinalab.cli import main
from retinalab.datamodules import GradingDataModule, PatchDataModule, SegmentationDataModule
from retinalab.datasets import DataFormatError, DatasetNotFoundError, read_dataset
from tests.data.folder.data import ROWS, UNLISTED
from tests.helpers.paths import REPO


def test_partial_labels_masks_patients_and_splits(folder_root):
    recs = {r.image_id: r for r in read_dataset("folder", folder_root)}
    assert len(recs) == len(ROWS) + len(UNLISTED)
    assert (
        recs["site1/a/001"].grade == 0
        and recs["site1/a/001"].patient_id == "p1"
        and recs["site1/a/001"].split == "train"
    )
    assert recs["site1/b/004"].grade is None and recs["site1/b/004"].meta == {"referable": "1"}  # referable-only row
    assert recs["extra/011"].grade is None and recs["extra/011"].patient_id is None  # not in labels.csv: unlabelled
    assert sorted(recs["site2/005"].masks) == ["EX", "MA"] and recs["site2/006"].masks == {}
    assert recs["site2/007"].split == "test"
    assert recs["site1/b/004"].image_path.suffix == ".JPG" and recs["site2/005"].image_path.suffix == ".tif"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda root: _labels(root, image="missing.jpg"), "not under"),
        (lambda root: _labels(root, grade=7), "outside 0-4"),
        (lambda root: _labels(root, referable=3), "referable must be 0 or 1"),
        (lambda root: _labels(root, split="validation"), "split 'validation'"),
        (lambda root: _labels(root, duplicate=True), "listed twice"),
        (lambda root: (root / "masks" / "drusen").mkdir(), "not one of"),
        (
            lambda root: (root / "masks" / "EX" / "999.png").write_bytes(
                (root / "masks" / "EX" / "001.png").read_bytes()
            ),
            "has no image named 999",
        ),
    ],
)
def test_bad_folders_name_the_file_and_the_problem(folder_root, edit, message):
    edit(folder_root)
    with pytest.raises(DataFormatError, match=message):
        read_dataset("folder", folder_root)


def _labels(root: Path, image: str | None = None, grade=None, referable=None, split=None, duplicate=False) -> None:
    df = pd.read_csv(root / "labels.csv", dtype=str).fillna("")
    if image is not None:
        df.loc[0, "image"] = image
    if grade is not None:
        df.loc[1, "grade"] = str(grade)
    if referable is not None:
        df.loc[3, "referable"] = str(referable)
    if split is not None:
        df.loc[2, "split"] = split
    if duplicate:
        df = pd.concat([df, df.iloc[[0]]])
    df.to_csv(root / "labels.csv", index=False)


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="is not a folder"):
        read_dataset("folder", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no image"):
        read_dataset("folder", tmp_path / "empty")


def test_skip_drops_bad_rows_only(folder_root):
    _labels(folder_root, image="missing.jpg")
    recs = read_dataset("folder", folder_root, on_error="skip")
    assert len(recs) == len(ROWS) + len(UNLISTED)  # the photograph of the bad row is still there, unlabelled
    assert {r.image_id: r.grade for r in recs}["site1/a/001"] is None


def test_grading_uses_referable_only_labels(folder_root, tmp_path):
    dm = GradingDataModule(
        "folder",
        str(folder_root),
        target="referable",
        image_size=64,
        split_mode="official",
        val_size=1,
        batch_size=2,
        num_workers=0,
        augment=False,
        split_file=str(tmp_path / "s.json"),
    )
    dm.setup("fit")
    ids = {r.image_id for part in dm.parts.values() for r in part}
    assert "site1/b/004" in ids and "extra/011" not in ids
    assert {r.image_id for r in dm.parts["test"]} == {"site2/007", "site2/008"}
    graded = GradingDataModule(
        "folder",
        str(folder_root),
        target="grade",
        image_size=64,
        split_mode="official",
        val_size=1,
        num_workers=0,
        split_file=str(tmp_path / "g.json"),
    )
    graded.setup("fit")
    assert "site1/b/004" not in {r.image_id for part in graded.parts.values() for r in part}


def _fit(args: list[str], cwd: Path) -> None:
    assert (
        main(
            [
                "fit",
                *args,
                "--trainer.fast_dev_run=1",
                "--trainer.accelerator=cpu",
                "--trainer.enable_progress_bar=false",
                f"--trainer.default_root_dir={cwd}",
                "--trainer.logger=false",
            ]
        )
        == 0
    )


def test_every_method_trains_on_the_folder_layout(folder_root, tmp_path, monkeypatch):
    monkeypatch.setenv("RETINALAB_CACHE", str(tmp_path / "cache"))
    patch = [
        "--data.image_size=128",
        "--data.patch_size=32",
        "--data.stride=32",
        "--data.val_size=1",
        "--data.test_size=1",
        "--data.cache_workers=0",
        "--data.batch_size=8",
        f"--data.root={folder_root}",
        f"--data.split_file={tmp_path / 'p.json'}",
    ]
    _fit(["--config", str(REPO / "conf" / "convnet" / "folder.yaml"), "--model.width=0.1", *patch], tmp_path)
    _fit(
        [
            "--config",
            str(REPO / "conf" / "ssl_gan" / "folder.yaml"),
            "--model.width=0.1",
            "--model.gen_width=0.1",
            *patch,
        ],
        tmp_path,
    )
    coll = [
        "--data.image_size=64",
        "--data.num_workers=0",
        "--data.batch_size=2",
        "--model.generator_width=0.0625",
        "--model.discriminator_width=0.0625",
        f"--data.root={folder_root}",
        f"--data.image_level_root={folder_root}",
        "--data.val_size=1",
        "--data.test_size=1",
        "--data.image_level_val_size=1",
        "--data.image_level_test_size=1",
    ]
    _fit(["--config", str(REPO / "conf" / "collaborative" / "folder_stage2.yaml"), *coll], tmp_path)
    dm = SegmentationDataModule(
        "folder",
        str(folder_root),
        image_size=64,
        split_mode="random",
        val_size=1,
        test_size=1,
        num_workers=0,
        batch_size=2,
        split_file=str(tmp_path / "seg.json"),
    )
    dm.setup("fit")
    assert (
        all(r.has_lesion_masks for part in dm.parts.values() for r in part)
        and sum(len(v) for v in dm.parts.values()) == 4
    )
    # EGL active learning on the images with exudate masks
    out = tmp_path / "al"
    assert (
        main(
            [
                "active",
                "--config",
                str(REPO / "conf" / "active" / "folder_egl.yaml"),
                f"--root={folder_root}",
                f"--out_dir={out}",
                f"--cache_dir={tmp_path / 'cache'}",
                "--patches.image_size=64",
                "--patches.patch_size=16",
                "--patches.grid_stride=16",
                "--patches.view_size=64",
                "--patches.exudate_per_image=4",
                "--patches.healthy_per_image=4",
                "--initial_batches=1",
                "--batch_size=4",
                "--k=2",
                "--max_rounds=1",
                "--hidden=8",
                "--conv_channels=[4,4]",
                "--val_size=1",
                "--test_size=1",
                "--num_workers=0",
                "--progress=false",
                "--accelerator=cpu",
            ]
        )
        == 0
    )
    assert (out / "metrics.csv").is_file()


def test_patch_datamodule_counts_unlabelled_photographs(folder_root, tmp_path):
    dm = PatchDataModule(
        "folder",
        str(folder_root),
        image_size=128,
        patch_size=32,
        stride=32,
        val_size=1,
        test_size=1,
        unlabeled=True,
        include_unknown=True,
        cache_dir=str(tmp_path / "c"),
        cache_workers=0,
        split_file=str(tmp_path / "p.json"),
    )
    dm.setup("fit")
    unlabeled_ids = {dm.cache.images[i]["image_id"] for i in dm.rows["unlabeled"]}
    assert {"extra/011", "extra/012"} <= unlabeled_ids


def test_synth_writes_the_folder_layout(tmp_path):
    assert (
        main(
            [
                "synth",
                "folder",
                "--out",
                str(tmp_path / "f"),
                "--num-images",
                "12",
                "--size",
                "128x96",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    recs = read_dataset("folder", tmp_path / "f")
    assert len(recs) == 12 and any(r.masks for r in recs) and any(r.grade is None for r in recs)
    assert any("referable" in r.meta for r in recs) and {r.split for r in recs} == {"train", "test"}
    assert len({r.patient_id for r in recs}) == 6


def test_every_run_records_its_dataset_report(folder_root, tmp_path, monkeypatch):
    """The datamodule's counts (labelled / unlabelled / val / test images and patches per class) reach
    the run's logger config (the W&B run's, offline) and split.json."""
    from retinalab.lightning.loggers import read_offline_run

    monkeypatch.setenv("RETINALAB_CACHE", str(tmp_path / "cache"))
    assert (
        main(
            [
                "fit",
                "--config",
                str(REPO / "conf" / "convnet" / "folder.yaml"),
                "--model.width=0.1",
                "--data.image_size=128",
                "--data.patch_size=32",
                "--data.stride=32",
                "--data.val_size=1",
                "--data.test_size=1",
                "--data.cache_workers=0",
                f"--data.root={folder_root}",
                "--trainer.max_epochs=1",
                "--trainer.limit_train_batches=1",
                "--trainer.limit_val_batches=1",
                "--trainer.accelerator=cpu",
                "--trainer.enable_progress_bar=false",
                f"--trainer.default_root_dir={tmp_path}",
                f"--trainer.logger.init_args.save_dir={tmp_path}",
            ]
        )
        == 0
    )
    run = next(tmp_path.glob("logs/version_*"))
    hp = read_offline_run(next(run.glob("wandb/offline-run-*")))["config"]
    split = json.loads((run / "split.json").read_text())
    assert hp["data/split_hash"] == split["hash"] and hp["data/dataset"] == "folder"
    for part in ("labeled", "val", "test"):
        assert hp[f"data/{part}/images"] == split["counts"][part]["images"] > 0
        assert hp[f"data/{part}/patches_diseased"] + hp[f"data/{part}/patches_healthy"] == hp[f"data/{part}/patches"]
