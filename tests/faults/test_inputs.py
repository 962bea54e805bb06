"""What a user types that the run cannot do (issue 48): a checkpoint of another model, a cut-short state,
options the split or the grid cannot take, a script without a main guard, DDP as typed. Each ends in one line
(exit 2) before anything is written, or in a correct run."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import yaml

from tests.helpers.cli import TINY
from tests.helpers.faults import active_argv, errors, tiny_fit
from tests.helpers.paths import REPO


def test_a_checkpoint_of_another_task_or_backbone_is_refused_unless_the_swap_is_asked_for(
    earlier_fit, tmp_path, capsys
):
    """The issue's second row: `test --config <an SSL-GAN config> --ckpt_path <a ConvNet checkpoint>` printed
    the ConvNet's metrics as the SSL-GAN's. Now one line says what the checkpoint holds; the flag makes the
    swap explicit, and the run's config.yaml then names the model that ran."""
    from retinalab.cli import main

    syn, runs = earlier_fit
    (ckpt,) = (runs / "checkpoints").glob("*.ckpt")
    gan = REPO / "tests" / "conf" / "ssl_gan_tiny.yaml"
    out = tmp_path / "test"
    argv = [
        "test",
        "--config",
        str(gan),
        f"--data.root={syn}",
        f"--data.cache_dir={runs.parent / 'cache'}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={out}",
        f"--ckpt_path={ckpt}",
    ]
    assert main(argv) == 2
    assert errors(capsys.readouterr().err) == [
        f"error: {ckpt} holds a PatchClassifierTask (backbone convnet), but the config's model is a PatchSSGANTask; "
        "run it with the config that trained it (config.yaml in its run folder), or add --model_from_checkpoint true "
        "to use the checkpoint's model."
    ]
    assert not out.exists()
    convnet = [a.replace(str(gan), str(TINY)) for a in argv]
    assert main([*convnet, "--model.backbone=resnet18"]) == 2
    refused = capsys.readouterr().err
    assert "holds a PatchClassifierTask (backbone convnet), but the config's model is a PatchClassifierTask " in refused
    assert "(backbone resnet18)" in refused
    assert main([*argv, "--model_from_checkpoint=true"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["class_path"] == "retinalab.tasks.PatchClassifierTask" and saved["model_from_checkpoint"]


def test_a_cut_short_active_state_says_what_to_do_and_doing_it_reruns_the_same_run(synth_eophtha, tmp_path, capsys):
    """`active --resume` on a truncated state.json blamed "another version of retinalab"; now the line says
    the file was changed and how to go on, and going on that way gives the same run, from its answers."""
    from retinalab.cli import main

    argv = active_argv(synth_eophtha, tmp_path, "--max_rounds=1")
    assert main(argv) == 0
    state = tmp_path / "al" / "state.json"
    first = json.loads(state.read_text())
    state.write_text(state.read_text()[:200])
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    (line,) = errors(capsys.readouterr().err)
    assert line.startswith(f"error: {state} is cut short (") and "Move it away and run again with --resume" in line
    state.rename(tmp_path / "damaged-state.json")
    assert main([*argv, "--resume"]) == 0
    again = json.loads(state.read_text())
    assert again["labelled"] == first["labelled"] and again["history"][-1]["item"] == first["history"][-1]["item"]


def test_active_names_its_own_options_when_the_split_leaves_nothing_to_train_on(synth_eophtha, tmp_path, capsys):
    from retinalab.cli import main

    assert main(active_argv(synth_eophtha, tmp_path, "--val_size=0.6", "--test_size=0.6")) == 2
    (line,) = errors(capsys.readouterr().err)
    assert "the split leaves no training data" in line and line.endswith("e.g. --val_size 0.2 --test_size 0.2.")


def test_a_script_without_a_main_guard_builds_the_cache_instead_of_hanging(earlier_fit, tmp_path):
    """A script calling retinalab at its top level, without `if __name__ == "__main__":`, hung for good at
    "Caching patches": the workers, started from a forkserver once the process has several threads,
    imported the script again and ran it. They no longer import the caller's script."""
    syn, _ = earlier_fit
    script = tmp_path / "my_script.py"
    script.write_text(
        "import sys, threading, time\n"
        "from retinalab.datasets import read_dataset\n"
        "from retinalab.preprocessing import PatchCache, PatchCacheConfig, PatchGrid\n"
        "print('script body ran', flush=True)\n"
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()  # workers from a forkserver\n"
        "records = read_dataset('idrid', sys.argv[1])\n"
        "config = PatchCacheConfig(grid=PatchGrid(128, 32, 32, 32))\n"
        "cache = PatchCache.build(records, cache_dir=sys.argv[2], config=config, num_workers=2, progress=False)\n"
        "print('built', len(cache))\n"
    )
    res = subprocess.run(
        [sys.executable, str(script), str(syn), str(tmp_path / "cache")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.splitlines() == ["script body ran", "built 24"]  # the body ran once, in the script's process


def test_ddp_as_a_lightning_user_types_it_runs_the_ssl_gan(earlier_fit, caplog):
    """`--trainer.strategy ddp` ended in DDP's reducer traceback on every rank for the SSL-GAN (each optimiser
    step updates one network). It now runs as the strategy that allows that, saying so; the ConvNet keeps
    plain DDP. (A two-process CPU fit of the SSL-GAN under `ddp` runs in tests/cli/test_cli.py's DDP test.)"""
    from retinalab.lightning.cli import cli

    syn, runs = earlier_fit
    common = [f"--data.root={syn}", f"--data.cache_dir={runs.parent / 'cache'}", "--trainer.logger=false"]
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=1", "--trainer.accelerator=cpu"]
    with caplog.at_level(logging.INFO, logger="retinalab.lightning.cli"):
        gan = cli(["--config", str(REPO / "tests" / "conf" / "ssl_gan_tiny.yaml"), *common, *ddp], run=False)
    assert gan.trainer.strategy._ddp_kwargs == {"find_unused_parameters": True}
    assert "PatchSSGANTask updates one network per optimiser step: --trainer.strategy ddp runs as " in caplog.text
    convnet = cli(["--config", str(TINY), *common, *ddp], run=False)
    assert convnet.trainer.strategy._ddp_kwargs == {}


def test_a_grid_the_images_cannot_hold_is_one_line_before_anything_is_written(earlier_fit, tmp_path, capsys):
    """`--data.patch_size 256` with 128 px images and `--data.stride 0` ended in an 80-line jsonargparse
    traceback with the reason at its end."""
    from retinalab.cli import main

    syn, runs = earlier_fit
    out = tmp_path / "runs"
    assert main(tiny_fit(syn, out, "--data.patch_size=256")) == 2
    (line,) = errors(capsys.readouterr().err)
    assert line.startswith("error: ") and "patch_size" in line and "256" in line and "128" in line, line
    assert main(tiny_fit(syn, out, "--data.stride=0")) == 2
    (line,) = errors(capsys.readouterr().err)
    assert line.startswith("error: ") and "stride" in line, line
    assert not out.exists()


def test_predict_on_a_missing_or_empty_folder_is_one_line_and_writes_no_config(earlier_fit, tmp_path, capsys):
    """`predict --data.predict_folder` on an empty or missing folder: a FileNotFoundError traceback, with
    config.yaml written first."""
    from retinalab.cli import main

    syn, runs = earlier_fit
    (ckpt,) = (runs / "checkpoints").glob("*.ckpt")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photograph here")
    for folder, says in (("missing", "is not a folder"), ("empty", "holds no photograph")):
        out = tmp_path / f"out_{folder}"
        argv = tiny_fit(syn, out, f"--ckpt_path={ckpt}", f"--data.predict_folder={tmp_path / folder}")
        assert main(["predict", *argv[1:]]) == 2
        (line,) = errors(capsys.readouterr().err)
        assert str(tmp_path / folder) in line and says in line, line
        assert not out.exists()
