"""retinalab's LightningCLI builder, shared by ``retinalab fit`` (:mod:`retinalab.cli`),
``retinalab study`` (:mod:`retinalab.experiments.study`), the demo and the benchmarks.

It lives apart from :mod:`retinalab.cli` so that the modules running fits import it without
importing the command dispatcher (which imports them back).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..utils.quiet import quiet_third_party

log = logging.getLogger(__name__)

WANDB_PROJECT = "retinalab"
_WANDB_ENV = {"project": "WANDB_PROJECT", "name": "WANDB_NAME", "group": "WANDB_RUN_GROUP", "tags": "WANDB_TAGS"}


def parse_size(text: str) -> tuple[int, int]:
    """``"1024x680"`` -> ``(1024, 680)``: an argparse type for ``--size``."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must look like 1024x680, got {text!r}") from None
    if w < 32 or h < 32:
        raise argparse.ArgumentTypeError(f"--size {text}: both sides must be >= 32 px")
    return w, h


def _get(ns: Any, *keys: str) -> Any:
    for k in keys:
        if ns is None:
            return None
        ns = ns.get(k) if hasattr(ns, "get") else getattr(ns, k, None)
    return ns


def wandb_run_defaults(config: Any) -> dict[str, Any]:
    """Project, name, group and tags for a W&B run of a ``retinalab fit`` config, from what the
    config says: group = the config file (``ssl_gan/synthetic``), name = group + labelled count +
    seed, tags = method (the config's folder, or the task class), dataset, ``labelled_<n>``, ``seed_<s>``."""
    files = [Path(str(p)) for p in (_get(config, "config") or [])]
    first = files[0] if files else None
    method = first.parent.name if first is not None else None
    if not method or method == ".":
        method = str(_get(config, "model", "class_path") or "model").rsplit(".", 1)[-1]
    group = f"{method}/{first.stem}" if first is not None else method
    data = _get(config, "data", "init_args")
    dataset = _get(data, "dataset") or str(_get(config, "data", "class_path") or "data").rsplit(".", 1)[-1]
    n = _get(data, "num_labeled_images")
    labelled = "all" if n is None else f"{n:g}" if isinstance(n, float) else str(n)
    seed = _get(config, "seed_everything")
    name = f"{group}-n{labelled}-s{seed}"
    return {
        "project": WANDB_PROJECT,
        "name": name,
        "group": group,
        "tags": [method, str(dataset), f"labelled_{labelled}", f"seed_{seed}"],
    }


def _fill_wandb_defaults(config: Any) -> None:
    """Give every W&B logger of ``config.trainer.logger`` the defaults it does not set itself."""
    loggers = _get(config, "trainer", "logger")
    for lg in loggers if isinstance(loggers, list) else [loggers]:
        if not str(_get(lg, "class_path") or "").endswith("WandbLogger"):
            continue
        init = lg.get("init_args") if hasattr(lg, "get") else None
        if init is None:
            continue
        for key, value in wandb_run_defaults(config).items():
            # W&B's own variables (WANDB_PROJECT, WANDB_RUN_GROUP as docker/slurm/fit.sbatch sets it,
            # WANDB_NAME, WANDB_TAGS) win over the config-derived defaults
            if init.get(key) in (None, [], "") and not os.environ.get(_WANDB_ENV[key]):
                init[key] = value


#: the DDP strategies a task that updates one network per optimiser step runs as instead
DDP_UNUSED = {"ddp": "ddp_find_unused_parameters_true", "ddp_spawn": "ddp_spawn_find_unused_parameters_true"}


def _ddp_as_typed(config: Any) -> None:
    """``--trainer.strategy ddp`` (or ``ddp_spawn``) for a task whose optimiser steps each update one network
    (``ddp_unused_parameters = True``: the SSL-GAN, paper 001's collaborative task): the variant that allows
    unused parameters, which DDP's default reducer needs for them, with a line saying so."""
    strategy = _get(config, "trainer", "strategy")
    path = _get(config, "model", "class_path")
    if not isinstance(strategy, str) or strategy not in DDP_UNUSED or not path:
        return
    from jsonargparse.typing import import_object

    try:
        task = import_object(str(path))
    except Exception:  # noqa: BLE001 - the parser reports a bad class path itself
        return
    if getattr(task, "ddp_unused_parameters", False):
        config.trainer.strategy = DDP_UNUSED[strategy]
        log.info(
            "%s updates one network per optimiser step: --trainer.strategy %s runs as %s",
            task.__name__,
            strategy,
            DDP_UNUSED[strategy],
        )


def cli(argv: Sequence[str], run: bool = True):
    """Build retinalab's LightningCLI on ``argv`` (with ``run=False``, only parse and instantiate).

    A run holds ``trainer.default_root_dir``'s lock while it runs (:func:`retinalab.utils.runs.run_lock`).
    Every run also gets :class:`retinalab.lightning.manifest.RunManifest` (``manifest.json`` beside the run),
    and a W&B logger without a project, name, group or tags gets them from the config
    (:func:`wandb_run_defaults`) unless W&B's environment variables set them.
    """
    import torch
    from pytorch_lightning import LightningDataModule, LightningModule
    from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

    from ..utils.errors import OneLineParserErrors
    from .manifest import RunManifest

    class RetinalabArgumentParser(OneLineParserErrors, LightningArgumentParser):
        """One line for a misspelt or mistyped option (retinalab.utils.errors.OneLineParserErrors)."""

    class RetinalabCLI(LightningCLI):
        def _prepare_subcommand_parser(self, klass, subcommand, **kwargs):
            parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
            if subcommand == "predict":
                # the prediction writers put every image on disk as it comes; keeping the outputs in
                # memory as well (Lightning's default) would grow with the number of images
                parser.set_defaults(return_predictions=False)
            return parser

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument(
                "--model_from_checkpoint",
                type=bool,
                default=False,
                help="with --ckpt_path: build the model the checkpoint holds where it differs from the config's "
                "(another task or backbone); without it such a checkpoint is refused",
            )

        def before_instantiate_classes(self) -> None:
            config = self.config.get(self.subcommand) if self.subcommand else self.config
            _fill_wandb_defaults(config)
            _ddp_as_typed(config)

        def _parse_ckpt_path(self) -> None:
            # Lightning reads --ckpt_path's hyper-parameters into the config before building the model:
            # a truncated file or another task's checkpoint would fail inside torch.load / jsonargparse
            from pathlib import Path as _Path

            from ..checkpoints import CheckpointError, read_checkpoint

            sub = self.config.get("subcommand")
            path = self.config[sub].get("ckpt_path") if sub else None
            if not path or not _Path(str(path)).is_file():
                return super()._parse_ckpt_path()
            self._ckpt = (str(path), read_checkpoint(str(path)))  # read once more by Lightning when it loads
            # Lightning would build the model the checkpoint names, whatever the config says: refuse the swap
            swap = model_swap(self._ckpt[1].get("hyper_parameters") or {}, self.config[sub].get("model"))
            if swap and not self.config[sub].get("model_from_checkpoint"):
                raise CheckpointError(
                    f"{path} holds {swap[0]}, but the config's model is {swap[1]}; run it with the config that "
                    "trained it (config.yaml in its run folder), or add --model_from_checkpoint true to use the "
                    "checkpoint's model"
                )
            try:
                super()._parse_ckpt_path()
            except (SystemExit, Exception) as e:  # jsonargparse reports a misfit by exiting or raising
                raise CheckpointError(
                    f"{path}: its hyper-parameters do not fit this config's model "
                    f"({str(e).splitlines()[0][:300] if str(e) else type(e).__name__}): a checkpoint of another task?"
                ) from None

        def _check_ckpt(self) -> None:
            # a wrong --ckpt_path is named with what is wrong before Lightning loads it ("last" and
            # "best" are Lightning's to resolve)
            from ..checkpoints import check_checkpoint

            path = (self.config.get(self.subcommand) or {}).get("ckpt_path") if self.subcommand else None
            if (
                path == "last"
            ):  # also the earlier runs' folders and SLURM's hpc_ckpt (retinalab.lightning.resume.find_last)
                from .resume import find_last

                found = find_last(self.trainer)
                if found:
                    log.info("--ckpt_path last: %s", found)
                    path = self.config_init[self.subcommand]["ckpt_path"] = found
            if path and str(path) not in ("last", "best", "hpc", "registry"):
                cached = getattr(self, "_ckpt", None)
                ckpt = check_checkpoint(str(path), self.model, cached[1] if cached and cached[0] == str(path) else None)
                self._ckpt = None
                if (
                    self.subcommand == "fit"
                ):  # log on into the run that wrote it (retinalab.lightning.resume.continue_run)
                    from .resume import continue_run

                    run = continue_run(self.trainer, ckpt)
                    if run:
                        log.info("--ckpt_path: continuing the run in %s", run)

        before_fit = before_validate = before_test = before_predict = _check_ckpt

        def _run_subcommand(self, subcommand: str) -> None:
            from pytorch_lightning.utilities.exceptions import SIGTERMException

            from ..utils.runs import rank0_lock

            try:
                # one writer per run folder: a second fit/test/predict on the same default_root_dir is
                # refused before it writes its config, split or manifest (retinalab.utils.runs)
                with rank0_lock(self.trainer.default_root_dir, f"retinalab {subcommand}"):
                    super()._run_subcommand(subcommand)
            except SIGTERMException:  # preempted: close the W&B run as such, so a resumed run can take its id
                finish_wandb(self.trainer, exit_code=128 + 15, preempted=True)
                raise
            except Exception as e:
                point_to_check_data(e, self.datamodule)
                raise

        def instantiate_trainer(self, **kwargs):
            import json

            from ..checkpoints import use_atomic_checkpoints

            trainer = super().instantiate_trainer(**kwargs)
            use_atomic_checkpoints(trainer)
            try:
                config = self.config.get(self.subcommand) if self.subcommand else self.config
                resolved = json.loads(self._parser(self.subcommand).dump(config, format="json", skip_check=True))
            except Exception:  # noqa: BLE001 - the manifest must never stop a run
                resolved = None
            trainer.callbacks.append(RunManifest(resolved))
            return trainer

    torch.set_float32_matmul_precision("high")
    # third-party notices a user cannot act on (retinalab.utils.quiet lists them; RETINALAB_VERBOSE=1 keeps them)
    quiet_third_party()
    return RetinalabCLI(
        LightningModule,
        LightningDataModule,
        parser_class=RetinalabArgumentParser,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=list(argv),
        auto_configure_optimizers=False,
        run=run,
    )


#: the hyper-parameters that decide which network a task builds (compared by :func:`model_swap`)
NETWORK_KEYS = ("backbone",)


def model_swap(hparams: dict[str, Any], model: Any) -> tuple[str, str] | None:
    """What a checkpoint's ``hparams`` hold and what the config's ``model`` (``class_path`` and
    ``init_args``) asks for, in words, where the task class or a :data:`NETWORK_KEYS` value differs;
    ``None`` where they agree (or the checkpoint does not say: it was not written by a LightningCLI run)."""
    theirs = hparams.get("_class_path")
    ours = _get(model, "class_path")
    if not theirs or not ours:
        return None
    init = _get(model, "init_args")

    def describe(cls: str, values: dict[str, Any]) -> str:
        shown = ", ".join(f"{k} {values[k]}" for k in NETWORK_KEYS if values.get(k) is not None)
        return f"a {cls.rsplit('.', 1)[-1]}" + (f" ({shown})" if shown else "")

    mine = {k: _get(init, k) for k in NETWORK_KEYS}
    if theirs != ours:
        return describe(theirs, hparams), describe(ours, mine)
    differ = [k for k in NETWORK_KEYS if k in hparams and mine[k] is not None and hparams[k] != mine[k]]
    if differ:
        return describe(theirs, hparams), describe(ours, mine)
    return None


def point_to_check_data(e: BaseException, datamodule: Any) -> None:
    """Give a data problem raised while training (a photograph or mask that does not decode, a mask
    of the wrong size: found by the patch cache or a loader worker, not by the reader) the
    ``retinalab check-data`` pointer of the datamodule's dataset whose root holds the file."""
    from ..datasets import DataFormatError
    from ..utils.errors import user_error

    found = user_error(e)
    if not isinstance(found, DataFormatError) or found.check_data is not None:
        return
    pairs = [
        (getattr(datamodule, a, None), getattr(datamodule, b, None))
        for a, b in (("dataset", "root"), ("image_level_dataset", "image_level_root"))
    ]
    pairs = [(d, str(r)) for d, r in pairs if d and r and Path(r).expanduser().is_dir()]
    if pairs:
        text = str(found)
        found.check_data = next(
            (p for p in pairs if str(Path(p[1]).expanduser().resolve()) in text or p[1] in text), pairs[0]
        )


def finish_wandb(trainer: Any, exit_code: int | None = None, preempted: bool = False) -> None:
    """Close the W&B runs of ``trainer``'s loggers, so that the next fit in this process starts its
    own run (Lightning's logger would otherwise attach to the open one). ``preempted`` (a SIGTERM)
    marks the run as preempted first; ``exit_code`` is what W&B records as the run's exit code."""
    from pytorch_lightning.loggers import WandbLogger

    from .loggers import WandbLogger as RetinalabWandbLogger

    for lg in trainer.loggers:
        if not isinstance(lg, WandbLogger) or lg._experiment is None:
            continue
        if preempted:
            lg._experiment.mark_preempting()
        if isinstance(lg, RetinalabWandbLogger):
            lg.finish(exit_code)  # offline: returns once the run file is complete
        else:
            lg._experiment.finish(exit_code=exit_code)
