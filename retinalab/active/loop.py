"""The active-learning loop of paper 002 (Algorithms 1 and 2) behind ``retinalab active``, resumable after any fault.

One run = one acquisition rule (``egl`` or ``random``) on one seeded patient split: round 0 trains the
initial model M; every later round asks the oracle for the labels of the items chosen by
:mod:`retinalab.active.rounds` (the algorithms as the paper writes them), adds them and updates M
(:mod:`retinalab.active.train`); the run stops at ``max_rounds``, at ``max_labels``, when the pool is
exhausted, or when the monitored validation metric has not improved for ``patience`` rounds (paper 002:
"when the training and validation errors do not decrease significantly"). After every round the state
is saved (:mod:`retinalab.active.state`: a run killed inside a round redoes that round without asking the
oracle again) and the plots redrawn (:mod:`retinalab.active.outputs`). This module wires them: set-up,
scoring (sharded under DDP), the oracle and the round loop.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning_fabric.loggers import Logger
from tqdm.auto import tqdm

from ..datasets import check_reader_args
from ..datasets.base import OnError
from .choose import Choosing, ClassWeight, InitialDraw, PatchKind, check_options
from .egl import Scope
from .heuristics import get_heuristic
from .oracle import LabelsPending
from .outputs import RunOutputs
from .pool import ExudatePatchConfig
from .rounds import Query
from .setup import RunSetup
from .state import (
    LoopState,
    area_under,
    ask_oracle,
    initial_model,
    nan_to_none,
    read_answers,
    record_round,
    run_lock,
    stop_reason,
    write_state,
)
from .train import balanced_weights, evaluate_patches, sgd_epochs

log = logging.getLogger(__name__)


class ActiveLearning(RunSetup, Choosing, RunOutputs):
    """``retinalab active``: EGL (or random) active learning of a LeNet exudate patch classifier.

    Args:
        dataset: reader name (``eophtha``, ``idrid``; the synthetic generator writes both layouts).
        root: dataset folder.
        reader_args: extra reader arguments (e-ophtha: ``parts: [EX]``; IDRiD: ``subsets: [segmentation]``).
        patches: how patches are cut (paper 002: 48x48).
        out_dir: run folder (state, checkpoints, CSVs, plots). Runs of the same study should be
            siblings: ``figure2.png`` in the parent compares all of them.
        acquisition: ``egl`` (Eq. 1 of paper 002), the strategies papers compare it with, ``entropy``
            (predictive entropy), ``margin`` (one minus the gap between the two class probabilities) and
            ``bald`` (mutual information under Monte-Carlo dropout, ``mc_samples`` passes), or ``random``
            (the baseline): a heuristic registered in :mod:`retinalab.active.heuristics`, or ``module:name``
            of a module registering one. Every scored one runs through Algorithms 1 and 2 exactly as EGL.
        select: ``patches`` (Algorithm 1) or ``images`` (Algorithm 2).
        k: patches chosen by Algorithm 1 per round (with ``select: images``: among the chosen images'
            patches, or from the whole pool after them; see ``image_patches``).
        images_per_round: images chosen by Algorithm 2 per round.
        image_patches: how Algorithm 2's line 10 ("update M with k selected patches using Algorithm 1
            and the patches in L_mu") is read. ``selected_images`` (default; what an annotator can do):
            the ``k`` patches of highest EGL (random: ``k`` drawn uniformly) among the unlabelled patches
            of the image(s) chosen this round, so every label comes from an image the annotator opened.
            ``pool``: every unlabelled patch of the chosen image(s), then ``k`` patches by Algorithm 1
            from the whole remaining pool.
        match_labels: random arm only: the folder of another run (the EGL arm, run first with the same
            data, split, seed and initial set) whose label and image counts this run copies round by
            round, so that both arms are compared at equal labels. Algorithm 1: the same number of
            random patches; Algorithm 2: the same number of random images, and random patches up to
            the same label count (``pool``: their patches, then random pool patches; ``selected_images``:
            among their patches, opening one more random image where they hold too few).
        initial_from: the folder of another run (run first) of the same data, split, seed, initial set
            and network, any acquisition (a BALD arm's dropout LeNet is another network than EGL's), whose
            initial model this run takes instead of training its own: the arms of a study then start
            from the very same round 0, trained once (its ``model-round000.pt``, which every run keeps).
        initial_batches: the initial model's labelled patches, in batches (Algorithm 1; paper: 5).
        initial_draw: how Algorithm 1's initial patches are drawn: ``stratified`` (default; half among
            the exudate patches and half among the healthy ones, uniformly within each, where the pool's
            labels are known: a uniform draw from a grid pool where exudates are rare may hold none, and
            the initial model then predicts one class) or ``random`` (uniform over the pool).
        initial_images: mu, the initial images (Algorithm 2; paper Figure 2: 4). Drawn half from images
            with exudates, half without, so that the initial model has seen both classes.
        pool_kind: which patches the oracle labels: ``centred`` (sampled from the ground-truth masks:
            the paper's setting, simulated oracle only) or ``grid`` (the image grid; no mask needed;
            exudate patches are as rare as exudates are in the photographs).
        eval_kind: the validation and test patches: ``centred`` (the paper's, balanced per class) or
            ``grid`` (every grid patch of the validation / test images: the F-measure of a detector
            run over whole photographs, exudates a minority).
        scope: EGL parameter scope (``fc``: down to the first fully connected layer, as in the paper).
        max_rounds: budget in rounds after the initial one.
        max_labels: budget in labelled patches (``None``: no limit).
        patience: stop when ``monitor`` has not improved by ``min_delta`` for this many rounds (0 disables).
        min_delta: the smallest change of ``monitor`` that counts as an improvement.
        monitor: the validation metric ``patience`` watches.
        lr: SGD learning rate (paper: 0.01).
        momentum: SGD momentum (0.9, Caffe's LeNet solver default, which the paper used).
        weight_decay: SGD weight decay (5e-4, Caffe's LeNet solver default).
        batch_size: SGD batch size (paper: 32).
        epochs_per_round: passes over the labelled set per update after round 0.
        class_weight: ``none`` (the paper's plain cross-entropy) or ``balanced`` (each class weighted by
            the inverse of its share of the labelled set: for grid pools, where a model trained on a few
            percent exudate patches otherwise calls every patch healthy).
        augment: train on the 8 dihedral variants of every labelled patch.
        initial_epochs: passes over the labelled set for the initial model.
        initial_augment: the initial model too (default no: paper 002's M is "initially trained with 5
            batches of 32 samples", i.e. ``initial_batches`` SGD steps with ``initial_epochs: 1``).
        conv_channels: LeNet's convolution widths (Caffe: 20 and 50).
        hidden: LeNet's fully connected width (Caffe: 500).
        dropout: LeNet's dropout rate before each fully connected layer, in training and in BALD's
            passes (evaluation and the other scores run without it). Default (``None``): 0.5 for a
            heuristic that needs it (``bald``), and 0 (Caffe's LeNet, the paper's) for the others.
        mc_samples: BALD's stochastic forward passes T per patch (scoring costs about T inference passes).
        val_size: patients' share for validation (by patient, stratified).
        test_size: patients' share for test (by patient, stratified).
        seed: split, initial set, random selections and training order.
        oracle: ``simulated`` (ground-truth masks) or ``human`` (queries to ``out_dir/queries``).
        track_images: images whose interestingness (sum of EGL) is recorded every round (Figure 3).
        score_batch_size: patches per EGL batch (memory is bounded by one batch); default 256 on a
            CPU and 4096 on a GPU, where smaller batches leave scoring bound by kernel launches.
        cache_dir: patch cache location (``None``: ``$RETINALAB_CACHE`` or ``~/.cache/retinalab``).
        num_workers: patch cache build workers.
        on_error: bad-file policy of the reader (``raise`` or ``skip``).
        accelerator: Lightning Fabric's accelerator.
        devices: Lightning Fabric's devices; with several, each rank scores a shard of the pool and trains
            on a shard of every batch (DDP).
        strategy: Lightning Fabric's strategy.
        num_nodes: Lightning Fabric's nodes.
        logger: ``"wandb"`` (the shipped configs) = :class:`retinalab.lightning.loggers.WandbLogger` under
            ``out_dir/logs/version_<k>``, online with a W&B key and offline otherwise, named
            ``active/<dataset>-<acquisition>-<select>-s<seed>``, grouped by dataset, tagged with the
            acquisition, selection, dataset and seed; or any Lightning logger; ``None``: none.
        progress: show progress bars.
        keep_checkpoints: keep every round's ``model-roundNNN.pt`` (default: the latest and round 0's).
        plot_every: draw the plots (``curves.png``, ``interestingness.png``, ``../figure2.png``, the
            round's heatmap) every this many rounds and when the run stops; 0: only when it stops;
            ``None``: never (a benchmark that draws its own figures across runs).
            State and tables are written every round whatever this says. Plots take most of a round's
            time on small pools (about 1.2 s of 1.9 s on two CPU cores in ``benchmarks/active_learning.py``).
    """

    def __init__(
        self,
        dataset: str = "eophtha",
        root: str = "data/e-ophtha",
        reader_args: dict[str, Any] | None = None,
        patches: ExudatePatchConfig = ExudatePatchConfig(),
        out_dir: str = "runs/active/egl",
        acquisition: str = "egl",
        select: Literal["patches", "images"] = "images",
        k: int = 32,
        images_per_round: int = 1,
        image_patches: Literal["selected_images", "pool"] = "selected_images",
        match_labels: str | None = None,
        initial_from: str | None = None,
        initial_batches: int = 5,
        initial_draw: InitialDraw = "stratified",
        initial_images: int = 4,
        pool_kind: PatchKind = "centred",
        eval_kind: PatchKind = "centred",
        scope: Scope = "fc",
        max_rounds: int = 30,
        max_labels: int | None = None,
        patience: int = 0,
        min_delta: float = 1e-3,
        monitor: Literal["val/loss", "val/acc"] = "val/loss",
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        batch_size: int = 32,
        epochs_per_round: int = 1,
        class_weight: ClassWeight = "none",
        initial_epochs: int = 1,
        augment: bool = True,
        initial_augment: bool = False,
        conv_channels: tuple[int, int] = (20, 50),
        hidden: int = 500,
        dropout: float | None = None,
        mc_samples: int = 20,
        val_size: float = 0.2,
        test_size: float = 0.2,
        seed: int = 0,
        oracle: Literal["simulated", "human"] = "simulated",
        track_images: int = 4,
        score_batch_size: int | None = None,
        cache_dir: str | None = None,
        num_workers: int = 0,
        on_error: OnError = "raise",
        accelerator: str = "auto",
        devices: int | str = 1,
        strategy: str = "auto",
        num_nodes: int = 1,
        logger: Logger | Literal["wandb"] | None = None,
        progress: bool = True,
        keep_checkpoints: bool = False,
        plot_every: int | None = 1,
    ) -> None:
        args = {
            name: value
            for name, value in locals().items()
            if name in inspect.signature(ActiveLearning.__init__).parameters and name != "self"
        }
        args["dropout"] = check_options(args)
        check_reader_args(dataset, {"on_error": on_error, **(reader_args or {})}, "reader_args")
        self.__dict__.update(args)
        self.config = {name: value for name, value in args.items() if name != "logger"}
        self.config["patches"] = asdict(patches)
        self.config["conv_channels"] = list(conv_channels)
        self.out = Path(out_dir)
        self._round_sigma: dict[int, float] = {}

    # ------------------------------------------------------------------ training / evaluation (train.py)
    def _train(self, state: LoopState, epochs: int, r: int) -> float:
        items = np.array(sorted(state.labelled), dtype=np.int64)
        if not len(items):
            return math.nan
        x = self.pool.tensor(items)
        y = torch.tensor([state.labelled[int(i)] for i in items])
        return sgd_epochs(
            self.model,
            self.optimizer,
            self.fabric.backward,
            x,
            y,
            epochs=epochs,
            batch_size=self.batch_size,
            variants=8 if self.augment and (r > 0 or self.initial_augment) else 1,
            generator=torch.Generator().manual_seed(self.seed * 100_003 + r),
            device=self.fabric.device,
            rank=self.fabric.global_rank,
            world=self.fabric.world_size,
            class_weight=balanced_weights(y) if self.class_weight == "balanced" else None,
        )

    def _take_initial(self, state: LoopState) -> float:
        """``initial_from``: that run's round-0 model and optimiser state instead of training; its training loss."""
        ckpt, loss = initial_model(Path(self.initial_from), self.config, state)
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        self.net.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        return loss

    def evaluate(self) -> dict[str, float]:
        """Validation loss/accuracy and test F-measure, sensitivity, specificity, accuracy, AUROC."""
        return evaluate_patches(self.net, self.pool, self.eval_items, self.score_batch_size, self.fabric.device)

    # ------------------------------------------------------------------ the loop
    #: called as ``on_phase(phase, round)`` when the loop moves on ("setting up", "choosing", "training",
    #: "evaluating", "saving"): the labelling page shows it while a round trains
    on_phase: Callable[[str, int], None] | None = None

    #: hold ``out_dir/.lock`` while a human-oracle run works (False: the caller holds it, as the labelling page does)
    lock_run: bool = True

    def _phase(self, phase: str, r: int) -> None:
        if self.on_phase is not None:
            self.on_phase(phase, r)

    def run(self, resume: bool = False) -> str:
        """Run (or continue) the loop. Returns ``"finished"`` or ``"waiting"`` (a human oracle has queries).
        A human-oracle run holds ``out_dir/.lock`` meanwhile (:func:`~retinalab.active.state.run_lock`):
        a second process on the same run (another ``--resume``, a labelling page) is refused."""
        try:
            if self.oracle != "human" or not self.lock_run:
                return self._run(resume)
            with run_lock(self.out, "retinalab active"):
                return self._run(resume)
        finally:
            if getattr(self, "_own_logger", False):
                self.logger.finish()  # the next run in this process starts its own W&B run

    def _run(self, resume: bool) -> str:
        self.check_out_dir(resume)  # before the patches are cut (minutes on a real dataset), not after
        self._phase("setting up", -1)
        self._setup()
        if self.rank0:
            self.out.mkdir(parents=True, exist_ok=True)
        self.fabric.barrier()
        state = self._load_state(resume)
        self._continue_run(state)
        if state.stopped:
            if self.rank0:
                self._write_outputs(state, plots=self.plot_every is not None)
                log.info("%s: the run already stopped (%s); outputs refreshed", self.out, state.stopped)
            return "finished"
        answers = read_answers(self.out)
        bar = tqdm(
            total=self.max_rounds + 1,
            initial=state.round + 1,
            desc=f"Active learning ({self.acquisition}, {self.select})",
            unit="round",
            disable=not (self.progress and self.rank0),
        )
        try:
            while state.stopped is None:
                r = state.round + 1
                self.select_seconds = math.nan  # a query kept from before a restart was chosen then
                if state.pending and state.pending["round"] == r:
                    query = Query(state.pending["items"], state.pending["scores"], state.pending["images"])
                else:
                    self._phase("choosing", r)
                    query = self._initial(state) if r == 0 else self._choose(state, r)
                items, scores, images, sigma = query
                if r > 0 and not items:
                    reason = f"the matched run {self.match_labels} stopped" if self.match_labels else "budget reached"
                    state.stopped = "pool exhausted" if not len(self._remaining(state)) else reason
                    self._save(state)  # the rounds that stop in their stopping test below are saved there
                    break
                try:
                    new = self._ask(items, scores, r, answers)
                except LabelsPending as wait:
                    state.pending = {"round": r, "items": items, "scores": nan_to_none(scores), "images": images}
                    self._remember_run(state)
                    if self.rank0:
                        write_state(self._state_path(), state)
                    log.warning("%s", wait)
                    return "waiting"
                record_round(state, self.pool, r, query, new, answers)
                self._phase("training", r)
                if r == 0 and self.initial_from:
                    train_loss = self._take_initial(state)
                else:
                    train_loss = self._train(state, self.initial_epochs if r == 0 else self.epochs_per_round, r)
                metrics = {
                    "round": r,
                    "labels": len(state.labelled),
                    "images": len(state.labelled_images),
                    "train/loss": train_loss,
                    **self.evaluate(),
                }
                metrics["exudate_labels"] = int(sum(state.labelled.values()))
                metrics["select_seconds"] = self.select_seconds if r > 0 else 0.0
                state.metrics.append(metrics)
                metrics["test/f1_area"] = area_under(state.metrics, "test/f1")  # over the labels used so far
                if get_heuristic(self.acquisition).scored or self.track_images:
                    tracked = self._sigma(self.tracked)
                    state.interestingness += [
                        {
                            "round": r,
                            "labels": len(state.labelled),
                            "image_id": self.pool.images[i]["image_id"],
                            "sigma": s,
                        }
                        for i, s in tracked.items()
                    ]
                    self._round_sigma = sigma
                    if sigma:
                        best = max(sigma, key=sigma.get)
                        metrics["selected_sigma"] = sigma.get(images[0], math.nan) if images else math.nan
                        metrics["max_sigma"] = sigma[best]
                state.round = r
                state.stopped = self._stop_reason(state, metrics)
                self._phase("saving", r)
                self._save(state)
                self._log(state, metrics)
                bar.update(1)
                bar.set_postfix(
                    labels=len(state.labelled),
                    f1=f"{metrics.get('test/f1', math.nan):.3f}",
                    val_loss=f"{metrics.get('val/loss', math.nan):.3f}",
                )
        finally:
            bar.close()
        if self.rank0:
            log.info(
                "%s: stopped after round %d (%s) with %d labelled patches",
                self.out,
                state.round,
                state.stopped,
                len(state.labelled),
            )
        return "finished"

    def _ask(self, items: list[int], scores: list[float], r: int, answers: dict[int, dict]) -> dict[int, int]:
        """Labels of ``items``: from ``answers.json`` where known, else from the oracle (journalled at once)."""
        return ask_oracle(self.oracle_fn, items, scores, r, answers, self.out if self.rank0 else None)

    def _stop_reason(self, state: LoopState, metrics: dict) -> str | None:
        return stop_reason(
            state,
            metrics,
            monitor=self.monitor,
            min_delta=self.min_delta,
            patience=self.patience,
            max_rounds=self.max_rounds,
            max_labels=self.max_labels,
            pool_left=len(self._remaining(state)),
        )
