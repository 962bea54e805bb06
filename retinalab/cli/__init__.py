"""The ``retinalab`` command line: Lightning's ``fit / validate / test / predict`` (LightningCLI, built in
:mod:`retinalab.lightning.cli`) and one module per extra command in this package (``synth``, ``active``,
``label``, ``study``, ``sweep``, ``check-data``, ``weights``), each with its ``DESCRIPTION`` and ``main(argv)``.

``retinalab {fit,validate,test,predict} --config conf/<method>/<dataset>.yaml [--data.root DIR ...]``
is Lightning's CLI (dotted overrides such as ``--model.lr`` and ``--trainer.max_epochs`` work);
``retinalab synth`` writes a synthetic dataset in a published layout.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from importlib import import_module

from ..lightning.cli import cli, finish_wandb
from ..utils.errors import (
    ConfigError,
    debug_requested,
    format_error,
    user_error,
)
from ..utils.quiet import quiet_third_party, take_verbose_flag

#: the extra commands: name -> the module of this package that runs it
COMMAND_MODULES = {
    "synth": "synth",
    "active": "active",
    "check-data": "check_data",
    "study": "study",
    "sweep": "sweep",
    "label": "label",
    "weights": "weights",
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

HELP = """usage: retinalab <command> [options]

Label-efficient diabetic-retinopathy analysis on colour fundus photographs.

commands:
  fit        train a model:        retinalab fit --config conf/convnet/idrid.yaml --data.root DIR
  validate   run the validation set on a checkpoint (--ckpt_path)
  test       run the test set on a checkpoint (--ckpt_path)
  predict    predict with a checkpoint (--ckpt_path)
  synth      write a synthetic dataset: retinalab synth idrid --out DIR --num-images 60
  active     active learning (paper 002): retinalab active --config conf/active/eophtha_egl.yaml [--resume]
  label      label a human-oracle active-learning run's queries on a local web page (keys 1/0):
             retinalab label --run runs/active/eophtha_human/egl [--export-ls | --import-ls FILE]
  study      label-efficiency study (methods x labelled counts x seeds), resumable:
             retinalab study --config conf/studies/idrid_label_efficiency.yaml [--cell I] [--collect]
  sweep      run a W&B sweep file locally, without a server: retinalab sweep conf/sweeps/x.yaml --count 8
  check-data validate a dataset (decode, masks, duplicates, splits) and draw a contact sheet:
             retinalab check-data --dataset folder --root DIR
  weights    fetch the pretrained weights a config needs into the Hugging Face cache (on a login node
             with internet), or list the cache: retinalab weights fetch --config X.yaml | retinalab weights list

Run `retinalab <command> --help` for the options of one command.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``retinalab`` command. A problem the user can fix (:class:`retinalab.utils.errors.UserError`)
    is one line on stderr and exit code 2; ``--debug`` or ``RETINALAB_DEBUG=1`` shows its traceback.
    ``--verbose`` or ``RETINALAB_VERBOSE=1`` shows the third-party notices :mod:`retinalab.utils.quiet` silences."""
    argv = take_verbose_flag(list(sys.argv[1:] if argv is None else argv))
    quiet_third_party()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    debug = debug_requested(argv)
    try:
        return _command(argv)
    except Exception as e:
        found = user_error(e)
        if found is None or debug:
            raise
        print(format_error(found), file=sys.stderr)
        return 2


def _command(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(HELP)
        return 0
    if argv[0] in COMMAND_MODULES:
        return import_module(f".{COMMAND_MODULES[argv[0]]}", __name__).main(argv[1:])
    if argv[0] not in LIGHTNING_COMMANDS:
        from ..utils.errors import suggest

        known = (*LIGHTNING_COMMANDS, *COMMAND_MODULES)
        raise ConfigError(
            f"unknown command {argv[0]!r}; the commands are {', '.join(known)}.{suggest(argv[0], known, prefix='')} "
            "Run `retinalab --help`"
        )
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    try:
        finish_wandb(cli(argv).trainer)  # the run's files are complete when the command returns
    except SIGTERMException:  # a SystemExit that Lightning raises with code 0; the run did not finish
        print(f"retinalab {argv[0]}: stopped by SIGTERM (resume with --ckpt_path last)", file=sys.stderr)
        return 128 + 15
    return 0
