"""Setting up an active-learning run and keeping its state (a mixin of
:class:`~retinalab.active.ActiveLearning`): the patch pool and split, the oracle, the LeNet under
Lightning Fabric, the run folder (refused when it belongs to another run), ``state.json`` and the
checkpoints (:mod:`retinalab.active.state`), and the W&B run a resumed loop logs on into."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..datasets import read_dataset
from ..models.lenet import LeNet
from ..utils.errors import ConfigError, OutputExistsError
from .oracle import HumanOracle, SimulatedOracle
from .pool import ExudatePatches
from .split import split_pool
from .state import LoopState, load_checkpoint, read_state, save_checkpoint

log = logging.getLogger(__name__)


class RunSetup:
    """Set-up and state of :class:`~retinalab.active.ActiveLearning` (it reads the loop's options)."""

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        from lightning_fabric import Fabric

        if self.logger == "wandb":
            self.logger = self.make_wandb_logger()
            self._own_logger = True
        loggers = [] if self.logger in (None, False) else [self.logger]
        self.fabric = Fabric(
            accelerator=self.accelerator,
            devices=self.devices,
            strategy=self.strategy,
            num_nodes=self.num_nodes,
            loggers=loggers,
        )
        self.fabric.launch()
        self.rank0 = self.fabric.global_rank == 0
        if self.score_batch_size is None:
            self.score_batch_size = 256 if self.fabric.device.type == "cpu" else 4096
        if self.oracle == "human" and self.fabric.world_size > 1:
            raise ConfigError("a human-oracle run waits for files between rounds: run it on one device (devices: 1)")
        records = read_dataset(self.dataset, self.root, on_error=self.on_error, **(self.reader_args or {}))
        if self.oracle == "simulated":
            unannotated = [r for r in records if self.patches.lesion not in r.masks]
            if unannotated:
                log.info(
                    "leaving out %d images without a %s mask (the simulated oracle needs one)",
                    len(unannotated),
                    self.patches.lesion,
                )
            records = [r for r in records if self.patches.lesion in r.masks]
        if not records:
            raise ConfigError(
                f"{self.dataset} at {self.root}: no images with a {self.patches.lesion} mask (check reader_args)"
            )
        build = dict(
            config=self.patches, cache_dir=self.cache_dir, num_workers=self.num_workers, on_error=self.on_error
        )
        if self.rank0:
            ExudatePatches.build(records, progress=self.progress, **build)
        self.fabric.barrier()
        self.pool = pool = ExudatePatches.build(records, progress=False, **build)
        self.__dict__.update(
            split_pool(
                pool, self.val_size, self.test_size, self.seed, self.pool_kind, self.track_images, self.eval_kind
            ).as_dict()
        )
        self.oracle_fn = (
            SimulatedOracle(pool)
            if self.oracle == "simulated"
            else HumanOracle(pool, self.out / "queries", describe=self.describe_queries)
        )
        torch.manual_seed(self.seed)
        # LeNet is channels-last (retinalab/models/layout.py): the cached patches are NHWC already
        model = LeNet(2, self.patches.patch_size, 3, tuple(self.conv_channels), self.hidden, self.dropout)
        opt = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        self.model, self.optimizer = self.fabric.setup(model, opt)
        if self.rank0:
            log.info(
                "pool: %d %s patches of %d training images; val %d / test %d balanced centred patches; split by "
                "patient %s",
                len(self.pool_items),
                self.pool_kind,
                len(self.split["train"]),
                len(self.eval_items["val"]),
                len(self.eval_items["test"]),
                {k_: len(v) for k_, v in self.split.items()},
            )

    @property
    def net(self) -> LeNet:
        """The plain LeNet (without the Fabric/DDP wrapper)."""
        return self.model.module if hasattr(self.model, "module") else self.model

    # ------------------------------------------------------------------ state
    def _state_path(self) -> Path:
        return self.out / "state.json"

    def check_out_dir(self, resume: bool) -> None:
        """Refuse ``out_dir`` before anything is cut or written there: a run without ``resume``, or
        (with it) a run of another config (:func:`read_state` names the fields that differ)."""
        path = self._state_path()
        if not path.is_file():
            return
        if not resume:
            raise OutputExistsError(
                f"{self.out} already holds an active-learning run (state.json); pass --resume to continue it or choose "
                "another out_dir"
            )
        read_state(path, self.config)

    def _load_state(self, resume: bool) -> LoopState:
        path = self._state_path()
        if not path.is_file():
            if resume:
                log.info("%s: no saved state, starting a new run", self.out)
            return LoopState(config=self.config)
        state = read_state(path, self.config)
        load_checkpoint(self.out, state, self.net, self.optimizer)
        return state

    def _remember_run(self, state: LoopState) -> None:
        """Keep the W&B run this loop logs into in ``state.json``, once it has started."""
        from ..lightning.resume import run_record

        record = run_record(self.logger) if getattr(self, "_own_logger", False) else None
        if record is not None and (record["wandb_id"] or state.run is None):
            state.run = record

    def _continue_run(self, state: LoopState) -> None:
        """``--resume``: log on into the run folder and W&B run of the rounds before (one run for the
        whole loop, also when a human oracle stops it after every round)."""
        if (
            state.run
            and getattr(self, "_own_logger", False)
            and self.logger.continue_run(state.run["dir"], state.run.get("wandb_id"), state.round + 1)
        ):
            log.info("%s: continuing the W&B run in %s", self.out, state.run["dir"])

    def _save(self, state: LoopState) -> None:
        self._remember_run(state)
        plots = self.plot_every is not None and (
            state.stopped is not None or (self.plot_every > 0 and state.round % self.plot_every == 0)
        )
        heat = self._heatmap_data(state) if plots else None  # scoring is collective under DDP: every rank takes part
        if self.rank0:
            save_checkpoint(self.out, state, self.net, self.optimizer, keep_old=self.keep_checkpoints)
            self._write_outputs(state, heat, plots)
        self.fabric.barrier()
