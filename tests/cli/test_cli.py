"""The command line as users call it: `retinalab synth`, then `retinalab fit/test/predict --config ...`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import torch

from retinalab.cli import main
from tests.helpers.cli import DEMO_TINY, TINY, run
from tests.helpers.paths import REPO


def test_synth_then_fit_test_predict(synth_idrid, monkeypatch, capsys, caplog):
    cwd = synth_idrid
    res = run(
        [
            "fit",
            "--config",
            str(TINY),
            "--data.root",
            "syn",
            "--trainer.max_epochs",
            "2",
            "--trainer.default_root_dir",
            "run",
            "--trainer.logger.init_args.save_dir",
            "run",
        ],
        cwd,
    )
    assert "Caching patches" in res.stderr  # progress bar of the cache build
    assert "args parameter" not in res.stderr  # Lightning's warning about LightningCLI(args=...) from the command line
    versions = sorted((cwd / "run" / "logs").glob("version_*"))
    assert versions, res.stderr[-2000:]
    log_dir = versions[-1]
    split = json.loads((log_dir / "split.json").read_text())
    assert split["counts"]["val"]["images"] == 3 and split["root"] == "syn"
    metrics = pd.read_csv(log_dir / "metrics.csv")
    assert {"train/loss", "val/patch_auroc", "val/image_auroc"} <= set(metrics.columns)
    assert metrics["val/patch_auroc"].notna().sum() == 2  # one validation per epoch
    # localisation quality of the blurred heatmaps, and overlays beside the run (no W&B logger here)
    assert metrics["val/localisation_auroc"].between(0, 1).sum() == 2
    assert sorted(p.name for p in (log_dir / "overlays").glob("*.png")) == ["val_epoch0000.png", "val_epoch0001.png"]
    ckpts = list((log_dir / "checkpoints").glob("*.ckpt"))
    assert ckpts
    # (test and predict in this process: the command line itself was run by the fit above)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("RETINALAB_CACHE", str(cwd / "cache"))
    capsys.readouterr()
    assert (
        main(
            [
                "test",
                "--config",
                str(TINY),
                "--data.root",
                "syn",
                "--ckpt_path",
                str(ckpts[0]),
                "--trainer.logger.init_args.save_dir",
                "run",
                "--trainer.enable_progress_bar=false",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "test/image_auroc" in out and "test/patch_auroc" in out
    # predict on the test split: scores.csv, overlays, localisation AUROC against the masks
    assert (
        main(
            [
                "predict",
                "--config",
                str(TINY),
                "--data.root",
                "syn",
                "--ckpt_path",
                str(ckpts[0]),
                "--trainer.logger",
                "false",
                "--trainer.default_root_dir",
                "pred",
                "--trainer.enable_progress_bar=false",
            ]
        )
        == 0
    )
    scores = pd.read_csv(cwd / "pred" / "predictions" / "scores.csv")
    assert len(scores) == 3 and set(scores["image"]) == set(split["test"])
    assert ((scores["score"] >= 0) & (scores["score"] <= 16)).all()  # sum of 16 sigmoids
    assert scores["predicted_label"].isin([0, 1]).all() and scores["threshold"].notna().all()
    assert scores["localisation_auroc"].notna().any()  # test images with lesion masks
    png = cwd / "pred" / "predictions" / scores["overlay"][0]
    from PIL import Image

    assert Image.open(png).size == (512, 256)  # image | overlay, 256 px thumbnails
    # a plain folder: any size, nested, a corrupt JPEG and a text file are reported, not fatal
    folder = cwd / "clinic"
    (folder / "2024").mkdir(parents=True)
    for i, p in enumerate(sorted((cwd / "syn").rglob("*.jpg"))[:2]):
        Image.open(p).resize((150 + 10 * i, 100)).save(folder / "2024" / f"eye{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 garbage")
    (folder / "notes.txt").write_text("not an image")
    caplog.set_level(logging.INFO, logger="retinalab")
    args = [
        "predict",
        "--config",
        str(TINY),
        "--ckpt_path",
        str(ckpts[0]),
        "--data.predict_folder",
        "clinic",
        "--trainer.logger",
        "false",
        "--trainer.default_root_dir",
        "clinic_out",
        "--trainer.enable_progress_bar=false",
    ]
    assert main(args) == 0
    out = cwd / "clinic_out" / "predictions"
    scores = pd.read_csv(out / "scores.csv")
    assert sorted(scores["image"]) == ["2024/eye0.png", "2024/eye1.png"]
    assert scores["localisation_auroc"].isna().all()
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["image"].tolist() == ["broken.jpg"] and "cannot decode" in skipped["error"][0]
    # rerun: resumes, scores nothing twice, lists the broken file once
    capsys.readouterr()
    assert main(args) == 0
    assert len(pd.read_csv(out / "scores.csv")) == 2 and "0 new image(s) scored" in capsys.readouterr().out
    assert len(pd.read_csv(out / "skipped.csv")) == 1
    # interrupted after the first image: the rerun decodes and scores only the missing one
    lines = (out / "scores.csv").read_text().splitlines(keepends=True)
    (out / "scores.csv").write_text("".join(lines[:2]))
    caplog.clear()
    assert main(args) == 0
    assert "1 new image(s) scored" in capsys.readouterr().out and "1 image(s) already written" in caplog.text
    assert sorted(pd.read_csv(out / "scores.csv")["image"]) == ["2024/eye0.png", "2024/eye1.png"]


def test_predict_keeps_no_outputs_in_memory(monkeypatch, tmp_path):
    """The writers put each image on disk; Trainer.predict must not also collect every output."""
    import functools

    import pytorch_lightning as pl

    seen = {}

    @functools.wraps(pl.Trainer.predict)  # the CLI reads the signature
    def record(self, *a, **kw):
        seen.update(kw)

    monkeypatch.setattr(pl.Trainer, "predict", record)
    main(["predict", "--config", str(TINY), "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)])
    assert seen["return_predictions"] is False


def test_fast_dev_run_with_dotted_overrides(synth_idrid):
    run(
        [
            "fit",
            "--config",
            str(TINY),
            "--data.root",
            "syn",
            "--trainer.fast_dev_run",
            "1",
            "--model.lr",
            "0.01",
            "--data.num_labeled_images",
            "5",
            "--data.split_file",
            "split5.json",
        ],
        synth_idrid,
    )
    split = json.loads((synth_idrid / "split5.json").read_text())
    assert len(split["labeled"]) == 5 and split["num_labeled_images"] == 5


def test_missing_root_is_one_line_and_exit_2(tmp_path):
    """The issue-33 case through the installed command: one line on stderr, no traceback, exit 2;
    --debug brings the traceback back."""
    args = ["fit", "--config", str(TINY), "--data.root", str(tmp_path / "nope"), "--trainer.fast_dev_run", "1"]
    res = run(args, tmp_path, check=False)
    assert res.returncode == 2, res.stderr[-3000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith(("INFO", "WARNING"))]
    assert (
        len(lines) == 1
        and lines[0].startswith("error: IDRiD: root=")
        and "nope" in lines[0]
        and "retinalab synth" in lines[0]
    ), res.stderr
    assert "Traceback" not in res.stderr
    from retinalab.datasets import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError, match="is not a folder"):
        main([*args, f"--trainer.default_root_dir={tmp_path}", "--debug"])


def test_help_and_unknown_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "synth" in out and "fit" in out
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert main(["synth", "idrid"]) == 2  # --out is required
    assert "--out" in capsys.readouterr().err


def test_synth_refuses_to_overwrite(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("keep")
    assert main(["synth", "eyepacs", "--out", str(tmp_path / "d"), "--num-images", "4"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["synth", "eyepacs", "--out", str(tmp_path / "e"), "--size", "10x10"]) == 2
    assert "--size" in capsys.readouterr().err


@pytest.mark.parametrize(
    "config",
    sorted(
        str(p.relative_to(REPO))
        for p in (REPO / "conf").rglob("*.yaml")
        if p.parent.name not in ("active", "overlays", "studies", "sweeps")
    ),
)
def test_every_shipped_config_instantiates_with_the_wandb_logger_offline(config, tmp_path, monkeypatch):
    """Lightning configs (conf/active/ is `retinalab active`'s: see test_active_loop.py; overlays/ are partial
    configs; studies/ and sweeps/ have their own tests). Each logs to W&B by default, offline without an
    API key, named, grouped and tagged from the config, its local files in a fresh logs/version_<k>."""
    from retinalab.lightning.cli import cli
    from retinalab.lightning.loggers import WandbLogger

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    c = cli(
        [
            "--config",
            str(REPO / config),
            "--data.root",
            str(tmp_path),
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        ],
        run=False,
    )
    assert c.model.__class__.__module__.startswith("retinalab.tasks")
    assert c.datamodule.root == str(tmp_path)
    # a budget in epochs or in steps (max_epochs -1); None: a test-only config
    assert (
        c.trainer.max_epochs is None
        or c.trainer.max_epochs >= 1
        or (c.trainer.max_epochs == -1 and c.trainer.max_steps > 0)
    )
    (logger,) = c.trainer.loggers
    assert isinstance(logger, WandbLogger) and logger._offline_run and logger._experiment is None  # no run before fit
    init = logger._wandb_init
    method, stem = Path(config).parent.name, Path(config).stem
    assert (
        init["project"] == "retinalab"
        and init["group"] == f"{method}/{stem}"
        and init["name"].startswith(f"{method}/{stem}-n")
    )
    assert init["tags"][0] == method and init["tags"][-1] == "seed_0" and init["tags"][2].startswith("labelled_")
    assert logger.save_dir == str(tmp_path / "runs" / "logs" / "version_0")


def test_a_second_run_gets_a_fresh_logs_folder_and_the_logger_can_be_switched_off(tmp_path, monkeypatch):
    """What the shipped configs share (their logger block), checked once rather than per config."""
    from retinalab.lightning.cli import cli

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    config = str(REPO / "conf/convnet/synthetic.yaml")
    (tmp_path / "runs" / "logs" / "version_0").mkdir(
        parents=True
    )  # a second run of the config does not reuse the first's folder
    again = cli(
        ["--config", config, "--data.root", str(tmp_path), f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"],
        run=False,
    )
    assert again.trainer.logger.save_dir == str(tmp_path / "runs" / "logs" / "version_1")
    off = cli(["--config", config, "--data.root", str(tmp_path), "--trainer.logger=false"], run=False)
    assert off.trainer.loggers == []


def test_demo_smoke_both_methods_on_one_split(tmp_path, monkeypatch, capsys):
    """Smoke test of `make demo` at a tiny size (the learning itself is tests/learning/test_learning.py's):
    it draws the benchmark preset, trains the three methods on one split, tests the final weights and
    the best checkpoint, and prints both with their bootstrap intervals. (Without W&B here: the
    shipped configs' W&B logging is tested by test_every_shipped_config_instantiates_with_the_wandb_logger_offline.)"""
    from retinalab.demo import main as demo
    from retinalab.synthetic import read_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RETINALAB_CACHE", str(tmp_path / "cache"))
    tiny = DEMO_TINY
    results = demo(
        ["--data", str(tmp_path / "syn"), "--num-images", "45", "--size", "128x96", "--conf", str(REPO / "conf"), *tiny]
    )
    assert read_settings(tmp_path / "syn")["preset"]["name"] == "benchmark"
    assert set(results) == {"ConvNet (supervised)", "SSL-GAN (semi-supervised)", "FixMatch (semi-supervised)"}
    for by_weights in results.values():
        assert set(by_weights) == {"final weights", "best on validation"}
        for r in by_weights.values():
            assert r["test/image_auroc_low"] <= r["test/image_auroc"] <= r["test/image_auroc_high"]
    out = capsys.readouterr().out
    assert out.count("| SSL-GAN (semi-supervised) |") == 2 and out.count("| FixMatch (semi-supervised) |") == 2
    assert "4 labelled images" in out and "on 6 photographs" in out
    # the same split for all three: one split hash in the runs' split.json
    splits = sorted(tmp_path.glob("runs/**/split.json"))
    assert len(splits) == 3 and len({json.loads(p.read_text())["hash"] for p in splits}) == 1
    # a folder that retinalab did not draw is never overwritten
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.jpg").write_bytes(b"mine")
    with pytest.raises(SystemExit):
        demo(["--data", str(tmp_path / "mine"), "--conf", str(REPO / "conf"), *tiny])
    assert (tmp_path / "mine" / "photo.jpg").read_bytes() == b"mine"
    assert "was not drawn by `retinalab synth`" in capsys.readouterr().err


def test_gan_optimisers_come_from_the_config(tmp_path):
    from retinalab.lightning.cli import cli

    c = cli(
        [
            "--config",
            str(REPO / "conf/ssl_gan/synthetic.yaml"),
            "--data.root",
            str(tmp_path),
            "--trainer.logger",
            "false",
            "--model.optimizer_d=torch.optim.SGD",
            "--model.optimizer_d.lr=0.05",
            "--model.optimizer_d.momentum=0.9",
        ],
        run=False,
    )
    c.model.trainer = None
    (opt_d, opt_g), _ = c.model.configure_optimizers()
    assert isinstance(opt_d, torch.optim.SGD) and opt_d.defaults["lr"] == 0.05 and opt_d.defaults["momentum"] == 0.9
    assert (
        isinstance(opt_g, torch.optim.Adam) and opt_g.defaults["lr"] == 3e-4 and opt_g.defaults["betas"] == (0.5, 0.999)
    )


# slow tier (make test-slow; CI runs it after make test): two DDP ranks are two Lightning start-ups (~25 s)
@pytest.mark.slow
def test_ssgan_under_ddp_ranks_end_identical_and_metrics_cover_the_whole_validation_set(synth_idrid):
    """The SSL-GAN (manual optimisation, two optimisers, the EMA discriminator) on 2 CPU processes
    (gloo): it fits, both ranks hold the same weights at the end (D, G and the EMA), and the logged
    validation AUROC (torchmetrics, synced across ranks) equals the one a single process computes on
    the whole validation split with those weights. (One DDP run for both properties: a second run of
    the ConvNet checked the second one until 2026-12-02.)

    Lightning's ``ddp`` re-launches ``sys.argv`` for the other rank, hence a subprocess."""
    import torch

    gan = REPO / "tests" / "conf" / "ssl_gan_tiny.yaml"
    weights = synth_idrid / "ddp_weights"
    run(
        [
            "fit",
            "--config",
            str(gan),
            "--data.root",
            "syn",
            "--trainer.strategy=ddp",  # as a Lightning user types it: runs as ddp_find_unused_parameters_true
            "--trainer.devices=2",
            "--trainer.logger.init_args.save_dir=ddp",
            "--trainer.callbacks+=tests.helpers.ddp_helpers.SaveRankWeights",
            "--trainer.enable_progress_bar=false",
        ],
        synth_idrid,
        {"PYTHONPATH": str(REPO), "RETINALAB_TEST_WEIGHTS_DIR": str(weights)},
    )
    metrics = pd.read_csv(sorted((synth_idrid / "ddp" / "logs").glob("version_*"))[-1] / "metrics.csv")
    assert metrics["val/image_auroc"].notna().any() and metrics["train/loss_g"].notna().any()
    assert len(list((synth_idrid / "ddp" / "logs").glob("version_*/checkpoints/*.ckpt"))) == 1
    r0, r1 = torch.load(weights / "rank0.pt"), torch.load(weights / "rank1.pt")
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
    assert any(k.startswith("generator.") for k in r0) and any(k.startswith("ema.") for k in r0)
    ddp_auroc = metrics["val/patch_auroc"].dropna().iloc[-1]
    from retinalab.lightning.cli import cli

    c = cli(
        [
            "--config",
            str(gan),
            "--data.root",
            str(synth_idrid / "syn"),
            "--trainer.logger",
            "false",
            f"--data.cache_dir={synth_idrid / 'cache'}",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={synth_idrid / 'single'}",
        ],
        run=False,
    )  # not the working directory
    c.model.load_state_dict(r0)
    single = c.trainer.validate(c.model, c.datamodule, verbose=False)[0]["val/patch_auroc"]
    assert single == pytest.approx(ddp_auroc, abs=1e-6)
