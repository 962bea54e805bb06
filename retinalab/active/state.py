"""What an active-learning run keeps on disk (``out_dir``) and reads back when it resumes.

* ``state.json``: :class:`LoopState` (labelled pool, query history, metrics, stopping counters), replaced
  atomically after every round;
* ``model-roundNNN.pt``: the LeNet and SGD state, written (atomically) before the ``state.json`` that
  names it, so the checkpoint named in ``state.json`` always exists;
* ``answers.json``: every oracle label as soon as it arrives (the loop, the labelling page and the
  Label Studio import all write it through :func:`journal` and :func:`write_answers`);
* ``.lock``: held by the process working on a human-oracle run (:func:`run_lock`);
* ``metrics.csv``, ``queries.csv``, ``interestingness.csv``, ``split.json``: tables for people and plots.

No training, scoring or selection here: see :mod:`retinalab.active.loop` and :mod:`retinalab.active.rounds`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..utils.errors import ConfigError, InputMissingError, UserError
from ..utils.io import atomic_torch_save, write_csv_atomic, write_json_atomic
from .oracle import LabelFileError

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
QUERY_COLUMNS = ("round", "item", "image_id", "centre_y", "centre_x", "score", "label", "time")


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
        state = LoopState.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: unreadable state ({e}); it was not written by this version of retinalab") from e
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


def save_checkpoint(
    out: Path, state: LoopState, model: torch.nn.Module, optimizer: torch.optim.Optimizer, keep_old: bool = False
) -> None:
    """``model-roundNNN.pt`` (atomically), then ``state.json`` naming it; the previous checkpoint is
    deleted afterwards unless ``keep_old`` or it is round 0's (the initial model, which other runs may
    start from: ``initial_from``)."""
    name = f"model-round{state.round:03d}.pt"
    atomic_torch_save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "round": state.round}, out / name
    )
    old, state.checkpoint = state.checkpoint, name
    write_state(out / "state.json", state)
    if old and old != name and not keep_old and old != INITIAL_CHECKPOINT:
        (out / old).unlink(missing_ok=True)


def load_checkpoint(out: Path, state: LoopState, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Restore the model and optimiser of the checkpoint ``state`` names (nothing when it names none)."""
    if state.checkpoint:
        ckpt = torch.load(out / state.checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])


def record_round(state: LoopState, pool, r: int, query, labels: dict[int, int], answers: dict[int, dict]) -> None:
    """Add round ``r``'s answered ``query`` (:class:`~retinalab.active.rounds.Query`) to the labelled pool and
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


def read_answers(out: Path) -> dict[int, dict]:
    """The oracle's journal ``answers.json``: item -> ``{label, round, time}``."""
    path = out / "answers.json"
    return {int(k): v for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}


def write_answers(out: Path, answers: dict[int, dict]) -> None:
    write_json_atomic(out / "answers.json", {str(k): v for k, v in sorted(answers.items())})


def journal(answers: dict[int, dict], got: dict[int, int], r: int, source: str | None = None) -> None:
    """Add the labels ``got`` in round ``r`` to ``answers`` (labels must be 0 or 1); ``source`` (the
    labelling page, Label Studio) is recorded with each where given."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    for i, y in got.items():
        if y not in (0, 1):
            raise ValueError(f"oracle answered {y!r} for item {i}; labels are 0 (healthy) or 1 (exudate)")
        answers[int(i)] = {"label": int(y), "round": r, "time": now, **({"source": source} if source else {})}


def ask_oracle(
    oracle, items: list[int], scores: list[float], r: int, answers: dict[int, dict], out: Path | None
) -> dict[int, int]:
    """Labels of round ``r``'s ``items``: from the journal ``answers`` where known, else from ``oracle``;
    every new answer (also the valid part of a bad label file) is journalled to ``out/answers.json`` at
    once (``out`` None: kept in memory only, as on the other DDP ranks)."""
    known = {i: answers[i]["label"] for i in items if i in answers}
    todo = [i for i in items if i not in answers]
    if not todo:
        return known

    def keep(got: dict[int, int]) -> None:
        if got:
            journal(answers, got, r)
            if out is not None:
                write_answers(out, answers)

    try:
        got = oracle(todo, r, [s for i, s in zip(items, scores, strict=True) if i not in answers])
    except LabelFileError as e:
        keep(getattr(e, "partial", {}))
        raise
    keep(got)
    return {**known, **got}


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


def write_tables(out: Path, state: LoopState, split: dict[str, list[str]]) -> None:
    """``metrics.csv``, ``queries.csv``, ``interestingness.csv`` and ``split.json`` (image ids per split)."""
    if state.metrics:
        keys = list(dict.fromkeys(k for row in state.metrics for k in row))
        write_csv_atomic(out / "metrics.csv", keys, [[row.get(k, "") for k in keys] for row in state.metrics])
    write_csv_atomic(
        out / "queries.csv", QUERY_COLUMNS, [[row.get(k, "") for k in QUERY_COLUMNS] for row in state.history]
    )
    if state.interestingness:
        ik = ["round", "labels", "image_id", "sigma"]
        write_csv_atomic(out / "interestingness.csv", ik, [[row[k] for k in ik] for row in state.interestingness])
    write_json_atomic(out / "split.json", split)


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


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a run's ``metrics.csv`` as floats (empty cells become NaN)."""
    with Path(path).open(newline="") as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


def nan_to_none(values: list[float | None]) -> list[float | None]:
    """JSON has no NaN: missing scores are stored as null."""
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in values]


class RunBusyError(UserError, RuntimeError):
    """Another process (a ``retinalab active --resume``, a labelling page) works on the same run."""


try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one process per run is then the user's to ensure
    fcntl = None
_HELD: dict[str, list] = {}  # lock file -> [descriptor, holder] of the locks this process holds
_GUARD = threading.Lock()


@contextmanager
def run_lock(out: str | Path, holder: str) -> Iterator[None]:
    """Hold ``out/.lock`` (an exclusive advisory lock, released when the process ends however it ends)
    while working on a run, so that two processes, or two sessions of one process, never journal or
    train the same run at once; the second is refused with :class:`RunBusyError` naming the first
    (``holder`` and its pid). The labelling page holds it for its lifetime and runs the loop's rounds
    under it (``ActiveLearning.lock_run = False``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out.resolve() / ".lock"
    key = str(path)
    with _GUARD:
        if key in _HELD:
            raise RunBusyError(f"{out} is in use by {_HELD[key][1]} (pid {os.getpid()}, this process); stop it first")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                who = path.read_text(errors="replace").strip() or "another process"
                os.close(fd)
                raise RunBusyError(f"{out} is in use by {who}; stop that process first (it holds {path})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{holder} (pid {os.getpid()})".encode())
        _HELD[key] = [fd, holder]
    try:
        yield
    finally:
        with _GUARD:
            del _HELD[key]
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
