"""The active-learning loop of paper 002 (Algorithms 1 and 2) behind ``retinalab active``, resumable after any fault.

One run = one acquisition rule on one seeded patient split: round 0 trains the initial model M; every
later round asks the oracle for the labels of the items its strategy chooses, adds them and updates M;
the run stops at ``max_rounds``, at ``max_labels``, when the pool is exhausted, or when the monitored
validation metric has not improved for ``patience`` rounds (paper 002: "when the training and validation
errors do not decrease significantly"). After every round the state is saved (a run killed inside a
round redoes that round without asking the oracle again) and the outputs written.

:class:`ActiveLearning` composes the parts, each in its module and each given what it needs:

* :class:`~retinalab.active.options.RunOptions`: the options, checked once;
* :class:`~retinalab.active.store.RunStore`: the run folder (state, checkpoints, answers journal, lock);
* :func:`~retinalab.active.split.open_pool` and :func:`~retinalab.active.split.split_pool`: the pool and its split;
* :class:`~retinalab.active.learner.Learner`: the LeNet under Lightning Fabric (train, evaluate, score);
* :class:`~retinalab.active.strategies.Strategy`: what each round asks (Algorithms 1 and 2, random);
* the oracle (:mod:`retinalab.active.oracle`) and :class:`~retinalab.active.outputs.RunReport` (tables,
  plots, logger).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from ..utils.errors import ConfigError
from ..utils.runs import rank0_lock
from .heuristics import get_heuristic
from .learner import Learner
from .options import RunOptions
from .oracle import HumanOracle, LabelsPending, SimulatedOracle
from .outputs import RunReport, make_wandb_logger
from .split import PoolSplit, open_pool, split_pool
from .state import LoopState, area_under, initial_model, nan_to_none, record_round, stop_reason
from .store import RunStore, ask_oracle
from .strategies import Query, Strategy

log = logging.getLogger(__name__)


class ActiveLearning:
    """``retinalab active``: EGL (or another acquisition, or random) active learning of a LeNet exudate
    patch classifier.

    Args:
        options: the run's :class:`~retinalab.active.options.RunOptions` (every option is documented
            there); or give them as keywords, ``ActiveLearning(dataset="idrid", k=16, ...)``.
    """

    #: called as ``on_phase(phase, round)`` when the loop moves on ("setting up", "choosing", "training",
    #: "evaluating", "saving"): the labelling page shows it while a round trains
    on_phase: Callable[[str, int], None] | None = None

    #: called as ``on_waiting(pending)`` (a :class:`~retinalab.active.oracle.LabelsPending`) when a round's
    #: queries wait for a person; None: a warning says where they are and which file to fill in
    on_waiting: Callable[[LabelsPending], None] | None = None

    #: hold ``out_dir/.lock`` while the run works (False: the caller holds it, as ``retinalab active`` and the
    #: labelling page do)
    lock_run: bool = True

    def __init__(self, options: RunOptions | None = None, **kwargs) -> None:
        if options is not None and kwargs:
            raise TypeError("give ActiveLearning its RunOptions or keyword options, not both")
        self.options = options if options is not None else RunOptions(**kwargs)
        self.config = self.options.config()
        self.out = Path(self.options.out_dir)
        self.store = RunStore(self.out, self.config)
        self.logger = self.options.logger  # "wandb" becomes the W&B logger at set-up
        self._own_logger = False
        # the parts that need the dataset and the devices, made by setup()
        self.learner: Learner | None = None
        self.pool = None
        self.data: PoolSplit | None = None
        self.strategy: Strategy | None = None
        self.oracle: SimulatedOracle | HumanOracle | None = None
        self.report: RunReport | None = None
        self._round_sigma: dict[int, float] = {}

    def check_out_dir(self, resume: bool) -> None:
        """Refuse ``out_dir`` when it holds another run, or a run and ``resume`` is not set (:meth:`RunStore.check`)."""
        self.store.check(resume)

    def setup(self) -> None:
        """Launch Fabric, cut (or open) the patch pool, split it, make the oracle, the strategy and the LeNet."""
        o = self.options
        if o.logger == "wandb":
            self.logger, self._own_logger = make_wandb_logger(o), True
        self.learner = learner = Learner(o, [] if self.logger in (None, False) else [self.logger])
        if o.oracle == "human" and learner.fabric.world_size > 1:
            raise ConfigError("a human-oracle run waits for files between rounds: run it on one device (devices: 1)")
        self.pool = pool = open_pool(o, learner.fabric)
        self.data = data = split_pool(pool, o.val_size, o.test_size, o.seed, o.pool_kind, o.track_images, o.eval_kind)
        self.strategy = Strategy(o, self.config, pool, data, learner)
        self.oracle = (
            SimulatedOracle(pool)
            if o.oracle == "simulated"
            else HumanOracle(pool, self.out / "queries", describe=self.strategy.describe_queries)
        )
        learner.build(pool)
        self.report = RunReport(o, self.store, learner.fabric, self.logger, pool, data.split)
        if learner.rank0:
            log.info(
                "pool: %d %s patches of %d training images; val %d / test %d balanced centred patches; split by "
                "patient %s",
                len(data.pool_items),
                o.pool_kind,
                len(data.split["train"]),
                len(data.eval_items["val"]),
                len(data.eval_items["test"]),
                {k_: len(v) for k_, v in data.split.items()},
            )

    def _phase(self, phase: str, r: int) -> None:
        if self.on_phase is not None:
            self.on_phase(phase, r)

    def run(self, resume: bool = False) -> str:
        """Run (or continue) the loop. Returns ``"finished"`` or ``"waiting"`` (a human oracle has queries).
        The run holds ``out_dir/.lock`` meanwhile (:func:`~retinalab.utils.runs.run_lock`, on rank 0): a
        second process on the same run (another run started there, a ``--resume``, a labelling page) is
        refused before it writes anything."""
        try:
            if not self.lock_run:
                return self._run(resume)
            with rank0_lock(self.out, "retinalab active"):
                return self._run(resume)
        finally:
            if self._own_logger:
                self.logger.finish()  # the next run in this process starts its own W&B run

    def _run(self, resume: bool) -> str:
        o = self.options
        self.check_out_dir(resume)  # before the patches are cut (minutes on a real dataset), not after
        self._phase("setting up", -1)
        self.setup()
        learner, strategy = self.learner, self.strategy
        if learner.rank0:
            self.out.mkdir(parents=True, exist_ok=True)
        learner.fabric.barrier()
        state = self.store.load(resume, learner.net, learner.optimizer)
        self._continue_run(state)
        if state.stopped:
            if learner.rank0:
                self.report.write(state, plots=o.plot_every is not None)
                log.info("%s: the run already stopped (%s); outputs refreshed", self.out, state.stopped)
            return "finished"
        answers = self.store.answers()
        bar = tqdm(
            total=o.max_rounds + 1,
            initial=state.round + 1,
            desc=f"Active learning ({o.acquisition}, {o.select})",
            unit="round",
            disable=not (o.progress and learner.rank0),
        )
        try:
            while state.stopped is None:
                r = state.round + 1
                strategy.seconds = math.nan  # a query kept from before a restart was chosen then
                if state.pending and state.pending["round"] == r:
                    query = Query(state.pending["items"], state.pending["scores"], state.pending["images"])
                else:
                    self._phase("choosing", r)
                    query = strategy.initial(state) if r == 0 else strategy.choose(state, r)
                if r > 0 and not query.items:
                    reason = f"the matched run {o.match_labels} stopped" if o.match_labels else "budget reached"
                    state.stopped = "pool exhausted" if not len(strategy.remaining(state)) else reason
                    self._save(state)  # the rounds that stop in their stopping test below are saved there
                    break
                try:
                    new = ask_oracle(
                        self.oracle, query.items, query.scores, r, answers, self.out if learner.rank0 else None
                    )
                except LabelsPending as wait:
                    state.pending = {
                        "round": r,
                        "items": query.items,
                        "scores": nan_to_none(query.scores),
                        "images": query.images,
                    }
                    self._remember_run(state)
                    if learner.rank0:
                        self.store.save_state(state)
                    if self.on_waiting is not None:
                        self.on_waiting(wait)
                    else:
                        log.warning("%s", wait)
                    return "waiting"
                record_round(state, self.pool, r, query, new, answers)
                metrics = self._train_and_evaluate(state, r, query)
                state.round = r
                state.stopped = stop_reason(
                    state,
                    metrics,
                    monitor=o.monitor,
                    min_delta=o.min_delta,
                    patience=o.patience,
                    max_rounds=o.max_rounds,
                    max_labels=o.max_labels,
                    pool_left=len(strategy.remaining(state)),
                )
                self._phase("saving", r)
                self._save(state)
                self.report.log(state, metrics)
                bar.update(1)
                bar.set_postfix(
                    labels=len(state.labelled),
                    f1=f"{metrics.get('test/f1', math.nan):.3f}",
                    val_loss=f"{metrics.get('val/loss', math.nan):.3f}",
                )
        finally:
            bar.close()
        if learner.rank0:
            log.info(
                "%s: stopped after round %d (%s) with %d labelled patches",
                self.out,
                state.round,
                state.stopped,
                len(state.labelled),
            )
        return "finished"

    def _train_and_evaluate(self, state: LoopState, r: int, query: Query) -> dict:
        """Update M with round ``r``'s labels (round 0: train it, or take ``initial_from``'s), evaluate it
        and record the round's metrics and interestingness in ``state``; the round's metrics."""
        o, learner = self.options, self.learner
        self._phase("training", r)
        if r == 0 and o.initial_from:
            ckpt, train_loss = initial_model(Path(o.initial_from), self.config, state)
            learner.load(ckpt)
        else:
            train_loss = learner.train(state, o.initial_epochs if r == 0 else o.epochs_per_round, r)
        metrics = {
            "round": r,
            "labels": len(state.labelled),
            "images": len(state.labelled_images),
            "train/loss": train_loss,
            **learner.evaluate(self.data.eval_items),
        }
        metrics["exudate_labels"] = int(sum(state.labelled.values()))
        metrics["select_seconds"] = self.strategy.seconds if r > 0 else 0.0
        state.metrics.append(metrics)
        metrics["test/f1_area"] = area_under(state.metrics, "test/f1")  # over the labels used so far
        if get_heuristic(o.acquisition).scored or o.track_images:
            tracked = self.strategy.sigma(self.data.tracked)
            state.interestingness += [
                {"round": r, "labels": len(state.labelled), "image_id": self.pool.images[i]["image_id"], "sigma": s}
                for i, s in tracked.items()
            ]
            self._round_sigma = sigma = query.sigma
            if sigma:
                best = max(sigma, key=sigma.get)
                metrics["selected_sigma"] = sigma.get(query.images[0], math.nan) if query.images else math.nan
                metrics["max_sigma"] = sigma[best]
        return metrics

    def _remember_run(self, state: LoopState) -> None:
        """Keep the W&B run this loop logs into in ``state.json``, once it has started."""
        from ..lightning.resume import run_record

        record = run_record(self.logger) if self._own_logger else None
        if record is not None and (record["wandb_id"] or state.run is None):
            state.run = record

    def _continue_run(self, state: LoopState) -> None:
        """``--resume``: log on into the run folder and W&B run of the rounds before (one run for the
        whole loop, also when a human oracle stops it after every round)."""
        if (
            state.run
            and self._own_logger
            and self.logger.continue_run(state.run["dir"], state.run.get("wandb_id"), state.round + 1)
        ):
            log.info("%s: continuing the W&B run in %s", self.out, state.run["dir"])

    def _save(self, state: LoopState) -> None:
        """The round's checkpoint and state, then its tables and (as ``plot_every`` says) plots."""
        o, learner = self.options, self.learner
        self._remember_run(state)
        plots = o.plot_every is not None and (
            state.stopped is not None or (o.plot_every > 0 and state.round % o.plot_every == 0)
        )
        # scoring is collective under DDP: every rank takes part
        heat = self.strategy.heatmap(state, self._round_sigma) if plots else None
        if learner.rank0:
            self.store.save(state, learner.net, learner.optimizer, keep_old=o.keep_checkpoints)
            self.report.write(state, heat, plots)
        learner.fabric.barrier()
