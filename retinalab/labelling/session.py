"""A human-oracle run seen from the labelling side: the round waiting for labels, its queries and the
answers given so far (:class:`PendingRound`), and a :class:`LabelSession` that takes answers one at a
time, journals each at once and, when a round is complete, runs the loop on (training, then the next
round's queries) in a background thread. Behind ``retinalab label`` (:mod:`retinalab.labelling.server`)
and the Label Studio files (:mod:`retinalab.labelling.label_studio`).

Every answer goes into the loop's own journal, ``answers.json`` (:mod:`retinalab.active.store`), through
the same functions the loop uses, so the loop takes them as if the oracle had given them; the CSV path
(``labels.csv`` + ``retinalab active --resume``) is unchanged. A session holds the run's lock for its
lifetime: a second page or a ``retinalab active --resume`` on the same run is refused.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from ..active.heuristics import score_label
from ..active.oracle import CLASS_NAMES, LabelFileError, read_queries
from ..active.store import journal, read_answers, write_answers
from ..utils.errors import ConfigError, InputMissingError, UserError, format_error, user_error
from ..utils.runs import run_lock
from .words import answer_words, heat_legend, question, round_note

log = logging.getLogger(__name__)


class LabelRequestError(UserError, ValueError):
    """An answer the run cannot take; ``status`` is the HTTP status the page gets (404, 409)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class PendingRound:
    """The round of a human-oracle run that waits for labels."""

    round: int
    folder: Path  # out_dir/queries/round_NNN
    queries: list[dict[str, str]]  # rows of its queries.csv, in query order

    @property
    def items(self) -> dict[str, int]:
        """query id -> pool item."""
        return {q["query_id"]: int(q["item"]) for q in self.queries}


def read_run_state(run: Path) -> dict:
    """``state.json`` of the run folder ``run`` ({} before the loop has saved one)."""
    path = run / "state.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: unreadable state ({e})") from e


def check_run(run: Path) -> dict:
    """The saved config of an active-learning run folder; refused unless it is a human-oracle run."""
    path = run / "config.yaml"
    if not path.is_file():
        raise InputMissingError(
            f"{run}: no config.yaml; pass the out_dir of a `retinalab active` run (e.g. runs/active/eophtha_human/egl)"
        )
    import yaml

    config = yaml.safe_load(path.read_text()) or {}
    if config.get("oracle") != "human":
        raise ConfigError(
            f"{path}: oracle is {config.get('oracle')!r}; labels are asked for only in runs with oracle: human"
        )
    return config


def pending_round(run: Path) -> PendingRound | None:
    """The round waiting for labels (None: none waits: the run is new, between rounds or stopped)."""
    pending = read_run_state(run).get("pending")
    if not pending:
        return None
    r = int(pending["round"])
    folder = run / "queries" / f"round_{r:03d}"
    queries = read_queries(folder)
    if sorted(int(q["item"]) for q in queries) != sorted(int(i) for i in pending["items"]):
        raise LabelFileError(
            f"{folder / 'queries.csv'} does not hold round {r}'s queries of {run / 'state.json'}; it was changed"
        )
    return PendingRound(r, folder, queries)


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return None if value is None or math.isnan(value) else value


class LabelSession:
    """Labels for a human-oracle run, one answer at a time (thread-safe; used by the labelling page).

    Args:
        run: the run folder (``out_dir`` of ``retinalab active`` with ``oracle: human``).
        make_loop: builds the run's :class:`~retinalab.active.ActiveLearning` from its folder (default:
            from its ``config.yaml``, as ``retinalab active --resume`` would).
    """

    def __init__(self, run: str | Path, make_loop: Callable[[Path], object] | None = None) -> None:
        self.run = Path(run)
        self.config = check_run(self.run)
        self._make_loop = make_loop or loop_from_run
        self._guard = threading.RLock()
        self._stack = ExitStack()
        self._thread: threading.Thread | None = None
        self.status = "labelling"  # labelling | training | finished | error
        self.phase, self.phase_round, self.since = "", -1, time.time()
        self.error: str | None = None
        self.pending: PendingRound | None = None
        self.answers: dict[int, dict] = {}
        self._last_metrics: list | None = None  # shown while a round trains (state.json is being rewritten)

    # ------------------------------------------------------------------ life cycle
    def open(self) -> LabelSession:
        """Take the run's lock and read where it stands; start the loop where no round waits for labels
        (a run whose folder exists but whose first queries were never written)."""
        self._stack.enter_context(run_lock(self.run, "retinalab label"))
        self.refresh()
        if self.pending is None and self.status == "labelling":
            self.train()
        return self

    def close(self, timeout: float | None = None) -> None:
        """Wait for a round in training (up to ``timeout`` s), then release the lock."""
        if self._thread is not None:
            self._thread.join(timeout)
        self._stack.close()

    def __enter__(self) -> LabelSession:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def refresh(self) -> None:
        """Re-read the state, the pending round and the journal from disk."""
        with self._guard:
            state = read_run_state(self.run)
            self.answers = read_answers(self.run)
            self.pending = pending_round(self.run)
            if self.status == "training":
                return
            if state.get("stopped"):
                self.status = "finished"
            elif self.status != "error":
                self.status = "labelling"

    # ------------------------------------------------------------------ what the page shows
    def snapshot(self) -> dict:
        """Everything the page shows, as JSON."""
        with self._guard:
            state = read_run_state(self.run) if self.status != "training" else {}
            metrics = state.get("metrics") or self._last_metrics
            self._last_metrics = metrics
            out = {
                "run": str(self.run),
                "status": self.status,
                "error": self.error,
                "stopped": state.get("stopped"),
                "acquisition": self.config.get("acquisition"),
                "score_name": score_label(self.config.get("acquisition") or "egl"),
                "max_rounds": self.config.get("max_rounds"),
                "phase": self.phase,
                "phase_round": self.phase_round,
                "elapsed": round(time.time() - self.since, 1),
                "labels": len(state.get("labelled", {})) if state else None,
                "history": [
                    {k: m.get(k) for k in ("round", "labels", "test/f1", "test/auroc", "val/loss")}
                    for m in metrics or []
                ],
                "round": None,
                "queries": [],
                "answered": 0,
                "total": 0,
                "classes": list(CLASS_NAMES),
                "question": question(self.config),
                "answer_words": answer_words(self.config),
                "legend": heat_legend(self.config),
                "note": "",
                "undo": [],
            }
            pending = self.pending if self.status == "labelling" else None
            if pending is not None:
                queries = []
                for q in pending.queries:
                    item = int(q["item"])
                    given = self.answers.get(item)
                    queries.append(
                        {
                            "id": q["query_id"],
                            "item": item,
                            "image_id": q.get("image_id"),
                            "centre": [int(q["centre_y"]), int(q["centre_x"])],
                            "patch_size": int(q["patch_size"]),
                            "image_size": int(q.get("image_size") or 0) or None,
                            "score": _number(q.get("score")),
                            "probability": _number(q.get("probability")),
                            "heat": bool(q.get("heat_png")),
                            "heat_range": [_number(q.get("heat_low")), _number(q.get("heat_high"))],
                            "label": None if given is None else int(given["label"]),
                        }
                    )
                # what undo takes back, last first: this round's answers in the order given (from the
                # journal, so a reloaded page undoes what was answered before the reload)
                given = sorted(
                    (self.answers[q["item"]].get("seq", 0), q["id"]) for q in queries if q["label"] is not None
                )
                out.update(
                    round=pending.round,
                    queries=queries,
                    total=len(queries),
                    answered=sum(q["label"] is not None for q in queries),
                    note=round_note(self.config, pending.round, len(queries)),
                    undo=[qid for _, qid in given],
                )
            return out

    def file(self, round_: int, query_id: str, kind: str) -> Path:
        """The picture ``kind`` (``patch``, ``photo``: boxed, ``plain``, ``heat``) of a query of the pending round."""
        column = {"patch": "patch_png", "photo": "image_png", "plain": "plain_png", "heat": "heat_png"}.get(kind)
        if column is None:
            raise LabelRequestError(f"unknown picture {kind!r} (patch, photo, plain or heat)", 404)
        with self._guard:
            row = self._query(round_, query_id)
            name = row.get(column) or ""
            folder = self.pending.folder.resolve()
        path = (folder / name).resolve()
        if not name or folder not in path.parents or not path.is_file():
            raise LabelRequestError(f"{query_id} of round {round_} has no {kind} picture", 404)
        return path

    # ------------------------------------------------------------------ answers
    def _query(self, round_: int, query_id: str) -> dict[str, str]:
        if self.status == "training":
            raise LabelRequestError(f"round {self.phase_round} is being trained; its answers are final", 409)
        if self.status == "finished":
            raise LabelRequestError("the run has stopped; there is nothing left to label", 409)
        if self.pending is None:
            raise LabelRequestError("no round waits for labels", 409)
        if round_ != self.pending.round:
            raise LabelRequestError(
                f"round {round_} is not the round waiting for labels (round {self.pending.round}); reload the page", 409
            )
        for row in self.pending.queries:
            if row["query_id"] == query_id:
                return row
        raise LabelRequestError(f"round {round_} has no query {query_id!r}", 404)

    def answer(self, round_: int, query_id: str, label: int, source: str = "page") -> dict:
        """Journal ``label`` (0 healthy, 1 exudate) for a query of the pending round, at once; when the
        round is complete, train (the loop runs on in the background). Returns :meth:`snapshot`."""
        if label not in (0, 1):
            raise LabelRequestError(f"label must be 0 ({CLASS_NAMES[0]}) or 1 ({CLASS_NAMES[1]}), not {label!r}", 422)
        with self._guard:
            item = int(self._query(round_, query_id)["item"])
            journal(self.answers, {item: int(label)}, round_, source)
            write_answers(self.run, self.answers)
            if all(i in self.answers for i in self.pending.items.values()):
                self.train()
            return self.snapshot()

    def unanswer(self, round_: int, query_id: str) -> dict:
        """Take back the answer to a query of the pending round (before the round trains)."""
        with self._guard:
            item = int(self._query(round_, query_id)["item"])
            if self.answers.pop(item, None) is not None:
                write_answers(self.run, self.answers)
            return self.snapshot()

    # ------------------------------------------------------------------ the loop
    def _on_phase(self, phase: str, r: int) -> None:
        with self._guard:
            self.phase, self.phase_round = phase, r

    def _on_waiting(self, pending) -> None:
        """The loop wrote a round's queries: the terminal says so in the page's words (not the file workflow's)."""
        r = int(pending.folder.name.rsplit("_", 1)[-1])
        log.info("round %d: %d patches are ready to label on the page", r, pending.count)

    def train(self) -> None:
        """Run the loop on in a background thread: it takes the journalled answers, trains, evaluates and
        writes the next round's queries (or stops)."""
        with self._guard:
            if self.status == "training":
                return
            self.status, self.error, self.since = "training", None, time.time()
            self.phase, self.phase_round = "starting", self.pending.round if self.pending else -1
            self._thread = threading.Thread(target=self._train, name="retinalab-label-loop", daemon=True)
            self._thread.start()

    def _train(self) -> None:
        status, error = "error", None
        try:
            loop = self._make_loop(self.run)
            loop.on_phase = self._on_phase
            loop.on_waiting = self._on_waiting
            loop.lock_run = False  # this session holds the run's lock
            loop.run(resume=True)
            status = "labelling"
        except Exception as e:  # shown on the page; the run's files are as the loop left them
            found = user_error(e)
            error = format_error(found) if found is not None else f"{type(e).__name__}: {e}"
            log.exception("the active-learning loop failed")
        with self._guard:
            self.status, self.error, self.phase = status, error, ""
            try:
                self.refresh()
            except Exception as e:  # noqa: BLE001 (a bad queries file after the round: shown, not raised in the thread)
                self.status, self.error = "error", str(e)


def loop_from_run(run: Path):
    """The :class:`~retinalab.active.ActiveLearning` of a run folder, from its ``config.yaml`` (writing to
    the folder given, wherever the run was first started)."""
    from ..active.command import active_parser

    parser = active_parser()
    cfg = parser.parse_args(["--config", str(run / "config.yaml"), "--out_dir", str(run)])
    cfg.pop("resume", None)
    cfg.pop("config", None)
    from ..active.loop import ActiveLearning
    from ..active.options import RunOptions

    return ActiveLearning(RunOptions(**parser.instantiate_classes(cfg)))
