"""Paper 000's SSL-GAN: generator sizes, losses against direct formulas, EMA evaluation, a real fit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from retinalab.datamodules import PatchDataModule
from retinalab.models.generator import PatchGenerator
from retinalab.tasks import PatchSSGANTask
from retinalab.tasks.patch_ssgan import feature_matching_loss, supervised_loss, unsupervised_loss
from retinalab.utils.errors import ConfigError
from tests.data.idrid.data import make_idrid


@pytest.mark.parametrize("size,base", [(32, 4), (64, 4), (96, 6)])
def test_generator_produces_the_discriminator_patch_size(size, base):
    g = PatchGenerator(size, width=0.125)
    out = g(g.sample_noise(3))
    assert out.shape == (3, 3, size, size) and g.base == base
    assert out.min() >= -1 and out.max() <= 1  # tanh
    z = g.sample_noise(1000)
    assert 0 <= z.min() and z.max() <= 1 and z.shape == (1000, 100)  # uniform noise, Table 4
    convs = [m for m in g.net if isinstance(m, torch.nn.ConvTranspose2d)]
    assert all(c.kernel_size == (5, 5) and c.stride == (2, 2) for c in convs)
    assert hasattr(convs[-1], "parametrizations")  # last layer weight-normed
    with pytest.raises(ValueError, match="not"):
        PatchGenerator(33)


def _direct_unsup(lr: torch.Tensor, lf: torch.Tensor) -> float:
    def p_fake(logits):
        return [1.0 / (1.0 + sum(math.exp(v) for v in row)) for row in logits.tolist()]

    real = [-math.log(1 - p) for p in p_fake(lr)]
    fake = [-math.log(p) for p in p_fake(lf)]
    return sum(real) / len(real) + sum(fake) / len(fake)


def test_losses_against_direct_formulas():
    torch.manual_seed(0)
    lab, y = torch.randn(6, 2, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1, 0])
    direct_sup = (
        sum(
            -math.log(math.exp(r[c]) / (math.exp(r[0]) + math.exp(r[1])))
            for r, c in zip(lab.tolist(), y.tolist(), strict=True)
        )
        / 6
    )
    assert supervised_loss(lab, y).item() == pytest.approx(direct_sup, rel=1e-9)
    lr, lf = torch.randn(5, 2, dtype=torch.float64) * 2, torch.randn(7, 2, dtype=torch.float64) * 2
    assert unsupervised_loss(lr, lf).item() == pytest.approx(_direct_unsup(lr, lf), rel=1e-9)
    k5r, k5f = torch.randn(4, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    assert unsupervised_loss(k5r, k5f).item() == pytest.approx(_direct_unsup(k5r, k5f), rel=1e-9)
    hr, hf = torch.randn(8, 6), torch.randn(5, 6)
    direct_fm = sum(abs(a - b) for a, b in zip(hr.mean(0).tolist(), hf.mean(0).tolist(), strict=True))
    assert feature_matching_loss(hr, hf).item() == pytest.approx(direct_fm, rel=1e-5)


def test_unsupervised_loss_is_stable_for_extreme_logits():
    big = torch.tensor([[1e4, -1e4], [-1e4, -1e4]])
    v = unsupervised_loss(big, big)
    assert torch.isfinite(v)
    # real with huge logits: -log(1 - p_fake) -> 0; real with tiny logits: -log(1 - p_fake) ~ 1e4
    assert unsupervised_loss(big[:1], torch.full((1, 2), -1e4)).item() == pytest.approx(0.0, abs=1e-3)


@pytest.fixture
def gan_setup(tmp_path):
    root = make_idrid(tmp_path / "IDRiD", seg=(6, 2), grades={"train": [0, 0, 0, 0], "test": [0, 0]})
    dm = PatchDataModule(
        "idrid",
        str(root),
        image_size=128,
        patch_size=32,
        stride=32,
        patch_out=32,
        val_size=3,
        test_size=3,
        num_labeled_images=3,
        unlabeled=True,
        batch_size=16,
        cache_dir=str(tmp_path / "c"),
        cache_workers=0,
        split_file=str(tmp_path / "s.json"),
    )
    task = PatchSSGANTask(width=0.1, gen_width=0.05, lr_decay_start=1)
    return dm, task


def test_ema_differs_from_raw_weights_and_is_evaluated(gan_setup, tmp_path):
    dm, task = gan_setup
    pl.seed_everything(0)
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
    assert bool(task.initialized) and int(task.ema.n_averaged) == trainer.global_step // 2 > 1
    raw = dict(task.discriminator.named_parameters())
    avg = dict(task.ema.module.named_parameters())
    assert any(not torch.allclose(raw[k], avg[k]) for k in raw)
    task.eval()
    x = torch.rand(4, 3, 32, 32)
    assert torch.allclose(task.eval_logits(x), task.ema.module(x * 2 - 1))
    assert not torch.allclose(task.eval_logits(x), task.discriminator(x * 2 - 1))
    # lr decays linearly after lr_decay_start=1: at the end of epoch 2 of 2 it has reached 0
    assert [g["lr"] for g in trainer.optimizers[0].param_groups] == [0.0]
    # the logged validation metrics are the EMA discriminator's: recomputed here over the validation
    # patches, the AUROC by counting (diseased, healthy) pairs and the loss as a size-weighted mean
    scores, labels, ce, n = [], [], 0.0, 0
    with torch.no_grad():
        for batch in dm.val_dataloader():
            logits = task.ema.module(batch["image"] * 2 - 1)
            scores.append(logits[:, 1] - logits[:, 0])
            labels.append(batch["label"])
            ce += float(torch.nn.functional.cross_entropy(logits, batch["label"], reduction="sum"))
            n += len(logits)
    s, y = torch.cat(scores), torch.cat(labels)
    pos, neg = s[y == 1], s[y == 0]
    assert len(pos) and len(neg)
    pairs = (pos[:, None] > neg[None, :]).float() + 0.5 * (pos[:, None] == neg[None, :]).float()
    metrics = trainer.callback_metrics
    assert float(metrics["val/patch_auroc"]) == pytest.approx(float(pairs.mean()), abs=1e-6)
    assert float(metrics["val/loss"]) == pytest.approx(ce / n, rel=1e-5)
    assert {"train/loss_g", "train/loss_unsup"} <= set(metrics)


def test_ssgan_refuses_labelled_only_batches(gan_setup, tmp_path):
    dm, task = gan_setup
    dm.unlabeled = False
    trainer = pl.Trainer(
        fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    with pytest.raises(ValueError, match="data.unlabeled: true"):
        trainer.fit(task, dm)


def test_overlays_are_logged_to_wandb_offline(gan_setup, tmp_path, monkeypatch):
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    dm, task = gan_setup
    logger = WandbLogger(project="retinalab-test", save_dir=str(tmp_path), offline=True)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, dm)
    logger.experiment.finish()
    images = list(tmp_path.glob("wandb/offline-run-*/files/media/images/val/overlays_*.png"))
    assert len(images) == 3  # the 3 validation images, photograph | heatmap side by side
    from PIL import Image

    assert Image.open(images[0]).size == (2 * 256, 256)
    # the GAN's samples: 8 x 8 generated | 8 x 8 real patches of 32 px, 2 px apart, shown twice as large
    (samples,) = tmp_path.glob("wandb/offline-run-*/files/media/images/gan/samples_*.png")
    side = 2 * (8 * 34 + 2)
    assert Image.open(samples).size == (2 * side + 16, side)


def test_testing_the_best_checkpoint_restores_its_ema_weights_and_threshold(gan_setup, tmp_path):
    """`trainer.test(ckpt_path="best")` (what `retinalab test` does) evaluates the EMA discriminator and
    the validation-chosen image threshold stored in that checkpoint, not whatever is in memory."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    dm, task = gan_setup
    pl.seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/image_auroc", mode="max", save_top_k=1)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        callbacks=[ckpt],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, dm)
    stored = torch.load(ckpt.best_model_path, weights_only=False)["state_dict"]
    threshold = float(stored["image_threshold"])
    assert threshold == threshold  # the validation set held both classes, so a threshold was chosen
    with torch.no_grad():  # what is in memory now must not be what gets tested
        for p in task.ema.module.parameters():
            p.fill_(0.5)
        task.image_threshold.fill_(123.0)
    res = trainer.test(task, dm, ckpt_path="best", verbose=False)[0]
    for name, p in task.ema.module.named_parameters():
        assert torch.equal(p, stored[f"ema.module.{name}"]), name
    assert float(task.image_threshold) == threshold and res["test/image_threshold"] == pytest.approx(threshold)


def test_gan_diagnostics_are_logged_per_epoch_and_the_sample_picture_changes_nothing(gan_setup, tmp_path):
    """Issue 29 item 2: every epoch the CSV logger gets D's real-vs-fake accuracy, the mean p(fake) on
    real and generated patches and the three loss terms, and the run folder a picture of 64 generated
    beside 64 real patches. Drawing the picture leaves G's batch-norm statistics and the global random
    state as they were (an exact resume depends on both)."""
    import pandas as pd
    from PIL import Image
    from pytorch_lightning.loggers import CSVLogger

    dm, task = gan_setup
    pl.seed_everything(0)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="logs"),
        enable_checkpointing=False,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, dm)
    rows = pd.read_csv(Path(trainer.log_dir) / "metrics.csv")
    keys = ["gan/d_accuracy", "gan/p_fake_real", "gan/p_fake_generated", "gan/loss_sup", "gan/loss_unsup", "gan/loss_g"]
    per_epoch = rows.dropna(subset=keys)
    assert per_epoch["epoch"].tolist() == [0, 1]
    assert ((per_epoch[keys[:3]] >= 0) & (per_epoch[keys[:3]] <= 1)).all().all()
    # the epoch's loss terms are the means of what the steps logged
    steps = rows.dropna(subset=["train/loss_sup"])
    assert per_epoch["gan/loss_sup"].iloc[0] == pytest.approx(
        steps[steps["epoch"] == 0]["train/loss_sup"].mean(), rel=1e-4
    )
    pictures = sorted((Path(trainer.log_dir) / "overlays").glob("gan_samples_epoch*.png"))
    assert [p.name for p in pictures] == ["gan_samples_epoch0000.png", "gan_samples_epoch0001.png"]
    side = 2 * (8 * 34 + 2)
    assert Image.open(pictures[0]).size == (2 * side + 16, side)

    # p(fake) = 1 / (1 + sum_k exp(l_k)), the fake logit being 0
    logits = torch.tensor([[0.0, 0.0], [2.0, -1.0], [-30.0, -30.0]])
    direct = [1 / (1 + sum(math.exp(v) for v in row)) for row in logits.tolist()]
    assert task.p_fake(logits).tolist() == pytest.approx(direct, rel=1e-6)

    real = torch.rand(64, 3, 32, 32)
    buffers = {k: v.clone() for k, v in task.generator.named_buffers()}
    rng = torch.get_rng_state()
    a = task.sample_picture(real)
    b = task.sample_picture(None)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, buffers[k]) for k, v in task.generator.named_buffers())
    assert np.array_equal(a[:, : b.shape[1]], b)  # the same noise every time: the same generated patches
    assert not np.array_equal(a[:, : b.shape[1]], task.sample_picture(None, seed=1))


def _fit_on_random_batches(task, root, epochs: int = 2, batches: int = 3, callbacks=()):
    """``task`` trained on fixed random batches (16 labelled, 16 unlabelled 32 px patches) for ``epochs``."""
    from torch.utils.data import DataLoader

    g = torch.Generator().manual_seed(0)
    data = [
        {
            "labeled": {
                "image": torch.rand(16, 3, 32, 32, generator=g),
                "label": torch.randint(0, 2, (16,), generator=g),
            },
            "unlabeled": {"image": torch.rand(16, 3, 32, 32, generator=g)},
        }
        for _ in range(batches)
    ]
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        default_root_dir=str(root),
    )
    trainer.fit(task, DataLoader(data, batch_size=None))  # a sized loader, as the patch datamodule's
    return data


def test_g_steps_updates_the_generator_that_many_times_per_discriminator_step(tmp_path):
    for g_steps in (1, 3):
        task = PatchSSGANTask(width=0.1, gen_width=0.1, g_steps=g_steps)
        _fit_on_random_batches(task, tmp_path, epochs=1, batches=2)
        opt_d, opt_g = task.optimizers()
        steps = [int(st["step"]) for st in opt_g.optimizer.state.values()]
        assert set(steps) == {2 * g_steps} and {int(st["step"]) for st in opt_d.optimizer.state.values()} == {2}
    with pytest.raises(ConfigError, match="g_steps must be >= 1"):
        PatchSSGANTask(g_steps=0)


class _NoiseSeen(pl.Callback):
    """Per batch: the scheduled noise size, and the noise D's update saw on the unlabelled patches (and
    whether the labelled ones reached it clean)."""

    def __init__(self, task) -> None:
        self.inputs, self.sigmas, self.noise, self.clean = [], [], [], []
        task.discriminator.register_forward_pre_hook(lambda _m, args: self.inputs.append(args[0].detach().clone()))

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.sigmas.append(module.noise_sigma())
        self.inputs.clear()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        x_in = self.inputs[0]  # the discriminator update's pass: labelled, unlabelled, generated
        self.clean.append(torch.equal(x_in[:16], batch["labeled"]["image"] * 2 - 1))
        self.noise.append((x_in[16:32] - (batch["unlabeled"]["image"] * 2 - 1)).std().item())


def test_instance_noise_reaches_only_the_gan_game_and_decays_to_zero(tmp_path):
    """D sees the unlabelled and generated patches with noise of the scheduled size, the labelled ones clean;
    the size falls linearly from instance_noise to 0 over the run; without it nothing is added."""
    for sigma0 in (0.0, 0.3):
        task = PatchSSGANTask(width=0.1, gen_width=0.1, instance_noise=sigma0)
        seen = _NoiseSeen(task)
        _fit_on_random_batches(task, tmp_path, epochs=2, batches=3, callbacks=[seen])
        assert all(seen.clean) and len(seen.sigmas) == 6
        assert seen.noise == pytest.approx(seen.sigmas, rel=0.15, abs=1e-6)
        if sigma0 == 0:
            assert seen.sigmas == [0.0] * 6
        else:
            assert seen.sigmas[0] == pytest.approx(0.3) and seen.sigmas[-1] == pytest.approx(0.3 / 6)
            assert all(a > b for a, b in zip(seen.sigmas, seen.sigmas[1:], strict=False))
