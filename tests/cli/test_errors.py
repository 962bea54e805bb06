"""Errors a user can fix, through the command line: one line, exit code 2, no traceback, the file or
option named, and nothing already written changed or lost (issue 33).

Each case builds what it needs in a work folder that also holds earlier results (a checkpoint, a patch
cache, a study's results, an active-learning state); every file there must be byte-identical after
the failed command. The commands run in-process through :func:`retinalab.cli.main`, the function the
``retinalab`` script calls; ``tests/cli/test_cli.py`` runs the installed command once for the same check.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retinalab.cli import main
from retinalab.utils.errors import (
    ConfigError,
    condense_parser_error,
    format_error,
    suggest,
    user_error,
)
from tests.data.folder.data import make_folder
from tests.helpers.paths import REPO

TINY = REPO / "tests" / "conf" / "convnet_tiny.yaml"


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    """A synthetic IDRiD layout of 24 photographs (built once; cases that damage data copy it)."""
    from retinalab.synthetic import write_synthetic

    return write_synthetic("idrid", tmp_path_factory.mktemp("errors") / "syn", 24, 5, (128, 96), workers=1)


def _fit(root: Path, work: Path, *extra: str, command: str = "fit") -> list[str]:
    return [
        command,
        "--config",
        str(TINY),
        f"--data.root={root}",
        f"--data.cache_dir={work / 'cache'}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={work / 'runs'}",
        *extra,
    ]


def _earlier_results(work: Path) -> None:
    """What an earlier session left in the work folder: none of it may change."""
    (work / "runs" / "checkpoints").mkdir(parents=True)
    (work / "runs" / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run's checkpoint")
    (work / "cache").mkdir()
    (work / "cache" / "patches.npy").write_bytes(np.arange(10, dtype=np.uint8).tobytes())
    (work / "study").mkdir()
    (work / "study" / "results.csv").write_text("method,labelled,seed,test/image_auroc\nconvnet,10,0,0.8\n")


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------- the cases: (argv builder, words the message must hold)
def missing_root(syn, work):
    return _fit(work / "nonexistent", work), ["nonexistent", "is not a folder", "retinalab synth"]


def reader_argument_of_another_reader(syn, work):
    # an IDRiD config switched to the folder layout keeps IDRiD's subsets
    return _fit(syn, work, "--data.dataset=folder", '--data.reader_args={"subsets": ["segmentation"]}'), [
        "`data.reader_args.subsets` is not an option of the folder reader",
        "labels (default 'labels.csv')",
        "--data.reader_args '{}'",
    ]


def reader_argument_of_the_wrong_value(syn, work):
    return _fit(syn, work, '--data.reader_args={"subsets": ["segmentaton"]}'), [
        "`data.reader_args.subsets`",
        "'segmentation'",
        "expected",
    ]


def misspelt_option(syn, work):
    return _fit(syn, work, "--model.widht", "0.5"), [
        "--model.widht is not an option of PatchClassifierTask",
        "Did you mean --model.width?",
    ]


def misspelt_data_option(syn, work):
    return _fit(syn, work, "--data.val_sise", "3"), ["--data.val_sise", "Did you mean --data.val_size?"]


def bad_option_value(syn, work):
    return _fit(syn, work, "--model.width", "abc"), ["--model.width", "expected float", "'abc'"]


def split_sizes_out_of_range(syn, work):
    return _fit(syn, work, "--data.val_size=500"), ["val_size=500", "no training data", "--data.val_size 0.2"]


def empty_unlabelled_pool(syn, work):
    # every training photograph labelled and the unlabelled pool restricted to the rest: nothing left
    return _fit(syn, work, "--data.unlabeled=true", "--data.unlabeled_pool=rest", "--data.batches_per_epoch=null"), [
        "unlabelled pool is empty",
        "unlabeled_pool",
    ]


def bad_label_row(syn, work):
    root = make_folder(work / "clinic")
    (root / "site2" / "006.jpeg").unlink()
    return _fit(root, work, "--data.dataset=folder", "--data.reader_args={}"), [
        "labels.csv: row 7 names image '006.jpeg'",
        f"retinalab check-data --dataset folder --root {root}",
    ]


def undecodable_image(syn, work):
    root = make_folder(work / "clinic")
    (root / "site1" / "a" / "002.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    return _fit(root, work, "--data.dataset=folder", "--data.reader_args={}"), [
        "002.jpg: cannot decode image",
        f"retinalab check-data --dataset folder --root {root}",
    ]


def mask_of_the_wrong_size(syn, work):
    root = shutil.copytree(syn, work / "syn")
    mask = next((root / "A. Segmentation" / "2. All Segmentation Groundtruths").rglob("*_EX.tif"))
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(mask)
    return _fit(root, work), [
        f"{mask.name}: mask is 30x20 but its image",
        f"retinalab check-data --dataset idrid --root {root}",
    ]


def corrupt_checkpoint(syn, work):
    ckpt = work / "runs" / "checkpoints" / "last.ckpt"  # the earlier run's file, which must survive as it is
    return _fit(syn, work, f"--ckpt_path={ckpt}", command="test"), ["last.ckpt", "not a readable checkpoint"]


def foreign_checkpoint(syn, work):
    ckpt = work / "other.ckpt"
    torch.save(
        {
            "state_dict": {"generator.conv.weight": torch.zeros(1)},
            "hyper_parameters": {"stage": "joint", "lam": 10.0},
            "pytorch-lightning_version": "2.6.6",
        },
        ckpt,
    )
    return _fit(syn, work, f"--ckpt_path={ckpt}", command="predict"), ["other.ckpt"]


def missing_checkpoint(syn, work):
    return _fit(syn, work, f"--ckpt_path={work / 'nope.ckpt'}", command="test"), ["nope.ckpt", "does not exist"]


def _active(work: Path, *extra: str) -> list[str]:
    return [
        "active",
        "--config",
        str(REPO / "conf" / "active" / "eophtha_egl.yaml"),
        f"--out_dir={work / 'al'}",
        f"--cache_dir={work / 'cache'}",
        "--logger=null",
        "--progress=false",
        *extra,
    ]


def active_state_of_another_run(syn, work):
    from retinalab.active.state import LoopState, write_state

    (work / "al").mkdir()
    (work / "al" / "config.yaml").write_text("seed: 3\n")  # the other run's config: kept
    write_state(work / "al" / "state.json", LoopState(round=2, config={"dataset": "eophtha", "seed": 3}))
    return _active(work, f"--root={syn}", "--resume"), ["state.json", "started with different", "seed"]


def active_reader_argument(syn, work):
    return _active(work, f"--root={syn}", '--reader_args={"part": ["EX"]}'), [
        "`reader_args.part` is not an option of the eophtha reader",
        "Did you mean reader_args.parts?",
    ]


def active_bad_value(syn, work):
    return _active(work, f"--root={syn}", "--acquisition=entropi"), ["acquisition", "entropi"]


def study_unknown_method(syn, work):
    cfg = work / "study.yaml"
    cfg.write_text(
        f"name: s\nout_dir: {work / 'study'}\nmethods:\n  convnet: conf/convnet/idrid.yaml\n  mystery: "
        "conf/mystery/idrid.yaml\n"
        "labelled: [10]\nseeds: [0]\n"
    )
    return ["study", "--config", str(cfg), "--collect"], [
        "study.yaml",
        "method 'mystery'",
        "conf/mystery/idrid.yaml",
        "does not exist",
    ]


def study_cell_out_of_range(syn, work):
    cfg = work / "study.yaml"
    cfg.write_text(
        f"name: s\nout_dir: {work / 'study'}\nmethods:\n  convnet: {REPO / 'conf/convnet/idrid.yaml'}\nlabelled: "
        "[10]\nseeds: [0]\n"
    )
    return ["study", "--config", str(cfg), "--cell", "7"], ["--cell 7", "cells 0..0"]


def check_data_missing_root(syn, work):
    return ["check-data", "--dataset", "eyepacs", "--root", str(work / "none"), "--out", str(work / "check")], [
        "none",
        "is not a folder",
    ]


def check_data_reader_argument(syn, work):
    return [
        "check-data",
        "--dataset",
        "idrid",
        "--root",
        str(syn),
        "--reader-args",
        '{"subsets": "grading"}',
        "--out",
        str(work / "check"),
    ], ["`subsets` in --reader-args", "expected"]


def synth_into_a_full_folder(syn, work):
    return ["synth", "idrid", "--out", str(work / "runs"), "--num-images", "4"], [
        "runs exists and is not empty",
        "--overwrite",
    ]


def synth_misspelt_option(syn, work):
    return ["synth", "idrid", "--out", str(work / "new"), "--num-imagse", "4"], [
        "unknown option --num-imagse",
        "Did you mean --num-images?",
    ]


CASES: list[Callable] = [
    missing_root,
    reader_argument_of_another_reader,
    reader_argument_of_the_wrong_value,
    misspelt_option,
    misspelt_data_option,
    bad_option_value,
    split_sizes_out_of_range,
    empty_unlabelled_pool,
    bad_label_row,
    undecodable_image,
    mask_of_the_wrong_size,
    corrupt_checkpoint,
    foreign_checkpoint,
    missing_checkpoint,
    active_state_of_another_run,
    active_reader_argument,
    active_bad_value,
    study_unknown_method,
    study_cell_out_of_range,
    check_data_missing_root,
    check_data_reader_argument,
    synth_into_a_full_folder,
    synth_misspelt_option,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_a_user_error_is_one_line_exit_2_and_loses_nothing(case, syn, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RETINALAB_DEBUG", raising=False)
    monkeypatch.setenv("RETINALAB_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    _earlier_results(work)
    argv, words = case(syn, work)
    before = _snapshot(work)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for word in words:
        assert word in lines[0], f"{word!r} not in: {lines[0]}"
    after = _snapshot(work)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    assert not changed, f"{case.__name__} changed or removed {changed}"


def test_debug_shows_the_traceback_and_unexpected_errors_keep_theirs(syn, tmp_path, monkeypatch):
    """--debug (or RETINALAB_DEBUG=1) re-raises a user error; an error that is not the user's (a bug)
    is never turned into a one-liner."""
    from retinalab.datasets import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError):
        main([*_fit(tmp_path / "nope", tmp_path), "--debug"])
    monkeypatch.setenv("RETINALAB_DEBUG", "1")
    with pytest.raises(DatasetNotFoundError):
        main(_fit(tmp_path / "nope", tmp_path))
    monkeypatch.delenv("RETINALAB_DEBUG")
    import retinalab.cli.synth as m

    monkeypatch.setattr(m, "main", lambda argv: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["synth", "idrid", "--out", str(tmp_path / "x")])


# --------------------------------------------------------------- the pieces, by hand
def test_suggestions_and_condensed_parser_messages():
    assert suggest("widht", ["width", "lr", "beta1"]) == " Did you mean --width?"
    assert suggest("model.widht", ["model.width", "data.root"]) == " Did you mean --model.width?"
    assert suggest("zzz", ["width"]) == ""
    union = (
        'Parser key "model":\n  Does not validate against any of the Union subtypes\n  Subtypes: [...]\n  Errors:\n'
        "    - Problem with given class_path 'retinalab.tasks.PatchClassifierTask':\n        Option 'widht' is not "
        "accepted\n"
        "    - Expected a <class 'NoneType'>\n  Given value type: <class 'NestedArg'>"
    )
    assert condense_parser_error(union, []) == (
        "--model.widht is not an option of PatchClassifierTask. Did you mean --model.width? "
        "Run with --help for the options"
    )
    typed = (
        "Parser key \"model\":\n  Errors:\n    - Problem with given class_path 'retinalab.tasks.PatchClassifierTask':\n"
        "        Parser key \"width\":\n          Expected a <class 'float'>. Got value: abc\n"
    )
    assert condense_parser_error(typed, []) == "--model.width: expected float, got 'abc'"
    assert condense_parser_error(
        "Unrecognized arguments: --trainer.max_epohcs 3", ["trainer.max_epochs", "trainer.devices"]
    ) == ("unknown option --trainer.max_epohcs. Did you mean --trainer.max_epochs? Run with --help for the options")
    # jsonargparse's report of a plain word given to a class-typed option (--data.labeled_selection egl)
    word = (
        'Parser key "data":\n  Does not validate against any of the Union subtypes\n  Errors:\n'
        "    - Problem with given class_path 'retinalab.datamodules.PatchDataModule':\n      Expected a dot import "
        "path string: egl\n"
        "  Given value: NestedArg(key='labeled_selection', val='egl')\n"
    )
    assert condense_parser_error(word, []) == (
        "--data.labeled_selection: expected the import path of a class (package.module.ClassName), got 'egl' "
        "('egl' is now --data.labeled_selection retinalab.active.EGLChooser)"
    )
    assert "is now" not in condense_parser_error(word.replace("'egl'", "'bald'"), [])
    # an option of a union type that no subtype accepts, inside its class's own union: the inner option,
    # what it takes and the value, not the group's list of subtypes (issue 48)
    inner = (
        'Parser key "data":\n  Does not validate against any of the Union subtypes\n  Subtypes: [<class '
        "'pytorch_lightning.core.datamodule.LightningDataModule'>, <class 'NoneType'>]\n  Errors:\n    - Problem "
        "with given class_path 'retinalab.datamodules.PatchDataModule':\n        Parser key \"batches_per_epoch\":\n"
        "          Does not validate against any of the Union subtypes\n          Subtypes: [<class 'int'>, "
        "typing.Literal['unlabeled'], <class 'NoneType'>]\n          Errors:\n            - Expected a <class "
        "'int'>\n            - Expected a typing.Literal['unlabeled']\n            - Expected a <class 'NoneType'>\n"
        "          Given value type: <class 'str'>\n          Given value: 1.5\n    - Expected a <class 'NoneType'>\n"
        "  Given value type: <class 'jsonargparse._util.NestedArg'>\n"
        "  Given value: NestedArg(key='batches_per_epoch', val='1.5')"
    )
    assert condense_parser_error(inner, []) == "--data.batches_per_epoch: expected int, 'unlabeled' or None, got '1.5'"
    # a misspelt top-level key of a config file: the keys there are, and the closest
    assert condense_parser_error(
        "Subcommand 'fit' does not accept option 'trainr.max_epochs'.",
        ["trainer.max_epochs", "model", "data", "seed_everything", "print_config"],
    ) == (
        "trainr.max_epochs is not an option of retinalab fit (a config's top-level keys are data, model, "
        "seed_everything, trainer). Did you mean trainer? Run with --help for the options"
    )


def test_a_config_that_is_not_yaml_is_named_with_its_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epochs: [1\n")
    assert main(["fit", "--config", str(TINY), "--config", str(bad)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: did not find expected ',' or ']' in {bad}, line 3, column 1."
    )
    assert main(["active", f"--config={bad}"]) == 2
    assert f"in {bad}, line 3, column 1." in capsys.readouterr().err


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("retinalab.lightning.WandbLogger", "retinalab.loggers.WandbLogger"),
        ("retinalab.lightning.PatchPredictionWriter", "retinalab.callbacks.PatchPredictionWriter"),
    ],
)
def test_an_earlier_runs_config_naming_a_moved_class_says_where_it_went(tmp_path, capsys, old, new):
    # the callbacks and the logger moved to retinalab.lightning; configs saved by earlier runs name the old paths
    text = (Path(__file__).parents[1] / "conf" / "convnet_tiny.yaml").read_text()
    if "WandbLogger" in old:
        text = text.replace("pytorch_lightning.loggers.CSVLogger", new).replace("      name: logs\n", "")
    else:
        text = text.replace(old, new)
    assert new in text
    (tmp_path / "config.yaml").write_text(text)
    assert main(["fit", "--config", str(tmp_path / "config.yaml"), f"--trainer.default_root_dir={tmp_path}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == (
        f"error: {new} is now {new.replace('.callbacks.', '.lightning.').replace('.loggers.', '.lightning.')}; "
        "change the class_path in the config (an earlier run's config.yaml too)."
    )
    assert list(tmp_path.iterdir()) == [tmp_path / "config.yaml"]  # nothing written


def test_format_error_one_line_pointer_and_wrapped_causes():
    from retinalab.datasets import DataFormatError

    e = DataFormatError("x.png: cannot decode image (truncated)")
    e.check_data = ("folder", "/data/clinic")
    assert format_error(e) == (
        "error: x.png: cannot decode image (truncated). "
        "Run `retinalab check-data --dataset folder --root /data/clinic` to list every problem."
    )
    # a DataLoader worker's re-raise carries the worker's traceback in the message: only its last line is kept
    worker = DataFormatError(
        "Caught DataFormatError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1\nretinalab.datasets.base.DataFormatError: y.png: cannot decode image\n'
    )
    assert format_error(worker) == "error: y.png: cannot decode image."
    # jsonargparse wraps what __init__ raises: the cause is found
    try:
        try:
            raise ConfigError("batches_per_epoch must be a positive int")
        except ConfigError as inner:
            raise ValueError("Does not validate against any of the Union subtypes") from inner
    except ValueError as outer:
        assert isinstance(user_error(outer), ConfigError)
    assert user_error(ValueError("a bug")) is None


def test_reader_arguments_are_checked_before_reading(tmp_path):
    from retinalab.datasets import read_dataset

    with pytest.raises(
        ConfigError,
        match=r"`data.reader_args.subset` is not an option of the idrid reader.*Did you mean data.reader_args.subsets",
    ):
        read_dataset(
            "idrid", tmp_path / "nothing-here", subset=["grading"]
        )  # not a DatasetNotFoundError: checked first
    with pytest.raises(
        ConfigError, match=r"`data.reader_args.include_test` = 'yes' does not fit the eyepacs reader: expected bool"
    ):
        read_dataset("eyepacs", tmp_path, include_test="yes")
    with pytest.raises(ConfigError, match="unknown dataset 'idird'"):
        read_dataset("idird", tmp_path)


def test_active_refuses_another_runs_folder_before_writing_its_config(tmp_path, capsys):
    """The resumed run's config.yaml is written only once its state.json is known to be this config's."""
    out = tmp_path / "al"
    out.mkdir()
    (out / "config.yaml").write_text("the other run's config\n")
    (out / "state.json").write_text(json.dumps({"round": 0, "config": {"dataset": "eophtha"}}))
    argv = _active(tmp_path, f"--root={tmp_path}", "--seed=1")
    assert main(argv) == 2  # without --resume: refused, names --resume
    assert "pass --resume" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == "the other run's config\n"


def test_a_script_importing_retinalab_main_still_runs_and_is_told_where_it_went():
    """`retinalab.main` (the command line before it became the `retinalab.cli` package) is what scripts
    written against earlier versions import; they run, with a warning naming the new modules."""
    import importlib
    import sys

    sys.modules.pop("retinalab.main", None)
    with pytest.warns(FutureWarning, match=r"retinalab.main is now retinalab.cli \(main\) and retinalab.lightning.cli"):
        old = importlib.import_module("retinalab.main")
    from retinalab.cli import main as new_main
    from retinalab.lightning.cli import cli as new_cli

    assert old.main is new_main and old.cli is new_cli
