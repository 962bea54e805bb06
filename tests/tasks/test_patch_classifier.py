"""Supervised patch baselines: class-balanced loss, plateau schedule, Table 5 augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from retinalab.datamodules import PatchDataModule
from retinalab.tasks import PatchClassifierTask
from tests.data.idrid.data import make_idrid


def test_resnet_baseline_with_table5_settings(tmp_path):
    root = make_idrid(tmp_path / "IDRiD", seg=(5, 1), grades={"train": [0, 0, 0], "test": [0]})
    dm = PatchDataModule(
        "idrid",
        str(root),
        image_size=128,
        patch_size=32,
        stride=32,
        patch_out=32,
        val_size=2,
        test_size=2,
        batch_size=16,
        cache_dir=str(tmp_path / "c"),
        cache_workers=0,
        augment_policy="table5",
        split_file=str(tmp_path / "s.json"),
    )
    task = PatchClassifierTask(
        backbone="resnet18", class_weight="balanced", lr=1e-5, beta1=0.9, lr_plateau_patience=1, data_init=False
    )
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, dm)
    healthy, diseased = dm.class_counts()
    assert healthy > diseased > 0
    expected = torch.tensor(
        [(healthy + diseased) / (2 * healthy), (healthy + diseased) / (2 * diseased)], dtype=torch.float32
    )
    assert torch.allclose(task.loss_weight, expected)
    sch = trainer.lr_scheduler_configs[0]
    assert isinstance(sch.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and sch.monitor == "val/loss"
    # table5 augmentation rotates/shifts: an augmented patch differs from the cached one
    tf = dm.train_dataloader().dataset.transform
    patch = dm.cache.patches[int(dm.rows["labeled"][0]), 5]
    assert any((tf(image=patch.copy())["image"] != patch).any() for _ in range(3))


def test_whole_image_baseline_uses_the_same_split(tmp_path):
    root = make_idrid(tmp_path / "IDRiD", seg=(5, 1), grades={"train": [0, 0, 0], "test": [0]})
    kw = dict(
        image_size=128,
        patch_size=32,
        stride=32,
        patch_out=32,
        val_size=2,
        test_size=2,
        num_labeled_images=4,
        batch_size=4,
        cache_dir=str(tmp_path / "c"),
        cache_workers=0,
        thumb_size=64,
    )
    patches = PatchDataModule("idrid", str(root), split_file=str(tmp_path / "p.json"), **kw)
    images = PatchDataModule("idrid", str(root), serve="images", split_file=str(tmp_path / "i.json"), **kw)
    patches.setup("fit")
    images.setup("fit")
    assert patches.split_hash == images.split_hash
    batch = next(iter(images.train_dataloader()))
    assert batch["image"].shape == (4, 3, 64, 64) and (batch["patch_index"] == 0).all()
    rows = batch["image_index"].numpy()
    assert batch["label"].tolist() == images.cache.image_labels[rows].tolist()
    assert images.class_counts().sum() == 4  # images, not patches
    task = PatchClassifierTask(backbone="resnet18", data_init=False, class_weight="balanced")
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, images)
    res = trainer.test(task, images, verbose=False)[0]
    # the image AUROC, by hand (Mann-Whitney: pairs of a diseased and a healthy test photograph)
    rec = task.eval_records["test"]
    score, diseased = rec["probs"].sum(1), rec["targets"].max(1) > 0
    assert diseased.any() and not diseased.all()  # both classes, or the figure below says nothing
    pairs = [(p > n) + 0.5 * (p == n) for p in score[diseased] for n in score[~diseased]]
    assert res["test/image_auroc"] == pytest.approx(float(np.mean(pairs)))
    preds = trainer.predict(task, images)  # an independent forward pass gives the same scores
    assert len(preds) == 2 and preds[0]["probs"].shape == (1,)
    assert sorted(p["score"] for p in preds) == pytest.approx(sorted(score.tolist()), rel=1e-5)
