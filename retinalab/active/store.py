"""An active-learning run's folder (``out_dir``): every file the run writes there, and the lock.

* ``state.json``: :class:`~retinalab.active.state.LoopState`, replaced atomically after every round;
* ``model-roundNNN.pt``: the LeNet and SGD state, written (atomically) before the ``state.json`` that
  names it, so the checkpoint named in ``state.json`` always exists;
* ``answers.json``: every oracle label as soon as it arrives (the loop, the labelling page and the
  Label Studio import all write it through :func:`journal` and :func:`write_answers`);
* ``.lock``: held by the process writing the run (:func:`retinalab.utils.runs.run_lock`);
* ``metrics.csv``, ``queries.csv``, ``interestingness.csv``, ``split.json``: tables for people and plots.

:class:`RunStore` is what the loop holds: one run folder, refused when it belongs to another run.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from pathlib import Path

import torch

from ..utils.errors import OutputExistsError
from ..utils.io import atomic_torch_save, write_csv_atomic, write_json_atomic
from .oracle import LabelFileError
from .state import INITIAL_CHECKPOINT, LoopState, read_state, write_state

log = logging.getLogger(__name__)

QUERY_COLUMNS = ("round", "item", "image_id", "centre_y", "centre_x", "score", "label", "time")


class RunStore:
    """The run folder ``out`` of a run with ``config`` (its options as :meth:`RunOptions.config
    <retinalab.active.options.RunOptions.config>` gives them).

    Args:
        out: the run folder.
        config: the run's config (a saved state whose frozen fields differ is refused).
    """

    def __init__(self, out: Path, config: dict) -> None:
        self.out, self.config = Path(out), config

    @property
    def state_path(self) -> Path:
        return self.out / "state.json"

    def check(self, resume: bool) -> None:
        """Refuse the folder before anything is cut or written there: a run without ``resume``, or (with
        it) a run of another config (:func:`~retinalab.active.state.read_state` names the fields that differ)."""
        if not self.state_path.is_file():
            return
        if not resume:
            raise OutputExistsError(
                f"{self.out} already holds an active-learning run (state.json); pass --resume to continue it or "
                "choose another out_dir"
            )
        read_state(self.state_path, self.config)

    def load(self, resume: bool, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> LoopState:
        """The saved state (its checkpoint loaded into ``model`` and ``optimizer``), or a new one."""
        if not self.state_path.is_file():
            if resume:
                log.info("%s: no saved state, starting a new run", self.out)
            return LoopState(config=self.config)
        state = read_state(self.state_path, self.config)
        load_checkpoint(self.out, state, model, optimizer)
        return state

    def save(
        self, state: LoopState, model: torch.nn.Module, optimizer: torch.optim.Optimizer, keep_old: bool = False
    ) -> None:
        """The round's checkpoint, then ``state.json`` naming it (:func:`save_checkpoint`)."""
        save_checkpoint(self.out, state, model, optimizer, keep_old)

    def save_state(self, state: LoopState) -> None:
        """``state.json`` alone (a round waiting for a human oracle's labels: nothing trained yet)."""
        write_state(self.state_path, state)

    def answers(self) -> dict[int, dict]:
        """The oracle's journal (:func:`read_answers`)."""
        return read_answers(self.out)

    def write_tables(self, state: LoopState, split: dict[str, list[str]]) -> None:
        """The run's tables (:func:`write_tables`)."""
        write_tables(self.out, state, split)


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


def read_answers(out: Path) -> dict[int, dict]:
    """The oracle's journal ``answers.json``: item -> ``{label, round, time}``."""
    path = out / "answers.json"
    return {int(k): v for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}


def write_answers(out: Path, answers: dict[int, dict]) -> None:
    write_json_atomic(out / "answers.json", {str(k): v for k, v in sorted(answers.items())})


def journal(answers: dict[int, dict], got: dict[int, int], r: int, source: str | None = None) -> None:
    """Add the labels ``got`` in round ``r`` to ``answers`` (labels must be 0 or 1); ``source`` (the
    labelling page, Label Studio) is recorded with each where given, and ``seq``, the order in which the
    answers were given (what the labelling page's undo takes back, across reloads)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    seq = max((int(a.get("seq", 0)) for a in answers.values()), default=0)
    for i, y in got.items():
        if y not in (0, 1):
            raise ValueError(f"oracle answered {y!r} for item {i}; labels are 0 (healthy) or 1 (exudate)")
        seq += 1
        answers[int(i)] = {
            "label": int(y),
            "round": r,
            "time": now,
            "seq": seq,
            **({"source": source} if source else {}),
        }


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


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a run's ``metrics.csv`` as floats (empty cells become NaN)."""
    with Path(path).open(newline="") as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()} for row in csv.DictReader(f)]
