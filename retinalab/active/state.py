"""What survives between the rounds of an active-learning run: :class:`LoopState` (``state.json``: the
labelled pool, query history, metrics, stopping counters), which of its options may not change when it
resumes, and the rules read from it: how a round is recorded, when the run stops, and what a run may
take from another (``match_labels``, ``initial_from``).

The files of a run folder are written by :mod:`retinalab.active.store`; no training, scoring or selection
here (:mod:`retinalab.active.learner`, :mod:`retinalab.active.strategies`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..utils.errors import ConfigError, InputMissingError
from ..utils.io import write_json_atomic

STATE_VERSION = 1
#: config fields that must not change between a run and its resumption
FROZEN = (
    "dataset",
    "root",
    "reader_args",
    "patches",
    "acquisition",
    "select",
    "pool_kind",
    "seed",
    "val_size",
    "test_size",
    "scope",
    "initial_batches",
    "initial_images",
    "conv_channels",
    "hidden",
    "image_patches",
    "match_labels",
    "initial_draw",
    "dropout",
    "mc_samples",
    "eval_kind",
    "class_weight",
)
#: what a frozen field meant in runs saved before it existed
LEGACY = {
    "image_patches": "pool",
    "match_labels": None,
    "initial_draw": "random",
    "dropout": 0.0,
    "mc_samples": 20,
    "eval_kind": "centred",
    "class_weight": "none",
}
#: fields a random arm may hold differently from the run whose label counts it copies (match_labels)
MATCH_FREE = ("acquisition", "match_labels", "dropout", "mc_samples")
#: the initial model's checkpoint, kept beside the latest one
INITIAL_CHECKPOINT = "model-round000.pt"
#: fields a run started from another's initial model (initial_from) may hold differently from it
INITIAL_FREE = ("acquisition", "match_labels", "mc_samples")
#: what else decides the initial model, beside the frozen fields
INITIAL_FIELDS = ("initial_epochs", "initial_augment", "augment", "lr", "momentum", "weight_decay", "batch_size")


@dataclass
class LoopState:
    """What survives between rounds (``state.json``)."""

    round: int = -1  # last completed round
    labelled: dict[int, int] = field(default_factory=dict)  # pool item -> label
    labelled_images: list[int] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)  # one row per query
    metrics: list[dict] = field(default_factory=list)  # one row per round
    interestingness: list[dict] = field(default_factory=list)
    best: float | None = None
    rounds_without_improvement: int = 0
    stopped: str | None = None
    checkpoint: str | None = None
    pending: dict | None = None  # queries of a round waiting for a human oracle
    config: dict = field(default_factory=dict)
    run: dict | None = (
        None  # the W&B run it logs into (retinalab.lightning.resume.run_record), which --resume goes on with
    )

    def to_json(self) -> dict:
        d = asdict(self)
        d["labelled"] = {str(k): v for k, v in self.labelled.items()}
        d["version"] = STATE_VERSION
        return d

    @classmethod
    def from_json(cls, d: dict) -> LoopState:
        d = dict(d)
        d.pop("version", None)
        d["labelled"] = {int(k): int(v) for k, v in d["labelled"].items()}
        return cls(**d)


def read_state(path: Path, config: dict, frozen: tuple[str, ...] = FROZEN) -> LoopState:
    """The state saved at ``path``; refused when it is unreadable or any ``frozen`` field of ``config`` differs."""
    try:
        text = path.read_text(errors="replace")
        saved = json.loads(text)
    except json.JSONDecodeError as e:
        what = "cut short" if not text.strip() or e.pos >= len(text.rstrip()) else "damaged"
        raise ConfigError(
            f"{path} is {what} ({e.msg} at character {e.pos} of {len(text)}); retinalab writes it whole, so it was "
            "changed or copied since. Move it away and run again with --resume: the run starts over from round 0 "
            "and takes every label already given from answers.json instead of asking again"
        ) from None
    try:
        state = LoopState.from_json(saved)
    except (KeyError, TypeError, AttributeError) as e:
        raise ConfigError(
            f"{path}: not an active-learning state of this version of retinalab ({type(e).__name__}: {e})"
        ) from None
    changed = [
        k
        for k in frozen
        if json.dumps(state.config.get(k, LEGACY.get(k)), sort_keys=True) != json.dumps(config.get(k), sort_keys=True)
    ]
    if changed:
        raise ConfigError(
            f"{path}: the run was started with different {', '.join(changed)}; resume with the same config or choose "
            "another out_dir"
        )
    return state


def write_state(path: Path, state: LoopState) -> None:
    write_json_atomic(path, state.to_json())


def record_round(state: LoopState, pool, r: int, query, labels: dict[int, int], answers: dict[int, dict]) -> None:
    """Add round ``r``'s answered ``query`` (:class:`~retinalab.active.strategies.Query`) to the labelled pool and
    the query history (with each answer's time from the journal ``answers``)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    for item, score in zip(query.items, nan_to_none(query.scores), strict=True):
        item = int(item)
        state.history.append(
            {
                "round": r,
                "item": item,
                "image_id": pool.images[int(pool.image[item])]["image_id"],
                "centre_y": int(pool.centre[item][0]),
                "centre_x": int(pool.centre[item][1]),
                "score": score,
                "label": int(labels[item]),
                "time": answers[item]["time"] if item in answers else now,
            }
        )
        state.labelled[item] = int(labels[item])
    state.labelled_images = sorted(set(state.labelled_images) | set(query.images))
    state.pending = None


def stop_reason(
    state: LoopState,
    metrics: dict,
    *,
    monitor: str,
    min_delta: float,
    patience: int,
    max_rounds: int,
    max_labels: int | None,
    pool_left: int,
) -> str | None:
    """Why the run stops after this round (None: it goes on); updates the patience counters of ``state``.
    ``monitor`` improves when it falls by more than ``min_delta`` (a loss) or rises by more (an accuracy)."""
    value = metrics.get(monitor, math.nan)
    if not math.isnan(value):
        sign = 1 if monitor.endswith("loss") else -1
        if state.best is None or sign * (state.best - value) > min_delta:
            state.best, state.rounds_without_improvement = value, 0
        else:
            state.rounds_without_improvement += 1
    if state.round >= max_rounds:
        return f"max_rounds ({max_rounds}) reached"
    if max_labels is not None and len(state.labelled) >= max_labels:
        return f"max_labels ({max_labels}) reached"
    if not pool_left:
        return "pool exhausted"
    if patience and state.rounds_without_improvement >= patience:
        return f"{monitor} flat for {patience} rounds"
    return None


def read_reference(folder: Path, config: dict, frozen: tuple[str, ...], option: str, what: str) -> LoopState:
    """The state of the run at ``folder`` that ``option`` (``match_labels``, ``initial_from``) names, refused
    when it does not exist (run ``what`` first) or any ``frozen`` field differs from ``config``."""
    path = folder / "state.json"
    if not path.is_file():
        raise InputMissingError(f"{option}: {path} does not exist; run {what} first")
    try:
        return read_state(path, config, frozen)
    except ValueError as e:
        raise ConfigError(f"{option}: {e}") from None


def matched_counts(folder: Path, config: dict, state: LoopState, r: int) -> tuple[int, int]:
    """New labels and new images of round ``r`` in the run at ``folder`` (``match_labels``), for a run with
    ``config`` at ``state``; that run must share every frozen field but the acquisition and the
    network's dropout (a BALD arm's dropout layers need not be in the random arm matched to it)."""
    ref = read_reference(
        folder, config, tuple(k for k in FROZEN if k not in MATCH_FREE), "match_labels", "the arm to match (e.g. EGL)"
    )
    rows = {int(m["round"]): m for m in ref.metrics}
    if r not in rows:
        if ref.stopped is None:
            raise ConfigError(
                f"match_labels: {folder} has completed {ref.round + 1} rounds, not round {r}; run it further first"
            )
        return 0, 0  # the matched run stopped: so does this one
    return int(rows[r]["labels"]) - len(state.labelled), int(rows[r]["images"]) - len(state.labelled_images)


def initial_model(folder: Path, config: dict, state: LoopState) -> tuple[Path, float]:
    """The round-0 checkpoint of the run at ``folder`` (``initial_from``) and its training loss, for a run
    with ``config`` whose round 0 labelled ``state.labelled``. That run must share every frozen field but
    the acquisition (a BALD arm's dropout LeNet is another network) and every field that decides the
    initial model, and its round 0 must have labelled the same patches."""
    ref = read_reference(
        folder,
        config,
        tuple(k for k in FROZEN if k not in INITIAL_FREE) + INITIAL_FIELDS,
        "initial_from",
        "the arm whose initial model this one takes",
    )
    ckpt = folder / INITIAL_CHECKPOINT
    if ref.round < 0 or not ckpt.is_file():
        raise InputMissingError(
            f"initial_from: {ckpt} does not exist; that run has not finished its round 0 (or it ran before "
            "round-0 models were kept)"
        )
    first = {int(row["item"]) for row in ref.history if int(row["round"]) == 0}
    if first != set(state.labelled):
        raise ConfigError(
            f"initial_from: {folder}'s initial model was trained on other patches than this run's initial set"
        )
    return ckpt, float(ref.metrics[0]["train/loss"])


def area_under(rows: list[dict], key: str = "test/f1") -> float:
    """Area under ``key`` against labels used (trapezoids over the rounds), divided by the label range:
    the mean of ``key`` over the labels a run has spent (NaN rows are skipped; one row: its value)."""
    pts = [
        (float(r["labels"]), float(r[key])) for r in rows if r.get(key) is not None and not math.isnan(float(r[key]))
    ]
    if not pts:
        return math.nan
    x, y = (np.array(v) for v in zip(*pts, strict=True))
    if x[-1] == x[0]:
        return float(y[-1])
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def nan_to_none(values: list[float | None]) -> list[float | None]:
    """JSON has no NaN: missing scores are stored as null."""
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in values]
