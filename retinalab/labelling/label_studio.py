"""Label Studio files for a human-oracle run, without a Label Studio server: the round waiting for
labels as Label Studio tasks (with the model's probability as a pre-annotation), and Label Studio's
exported annotations read back into the run's answers journal.

* :func:`export_tasks` writes ``tasks.json`` (Label Studio's "basic JSON" import format: one task per
  query, ``data`` with the patch, the boxed photograph and the query's ids, ``predictions`` with the
  model's label and probability) and ``label_config.xml`` (the labelling interface: both pictures,
  one choice of ``exudate`` / ``healthy`` with hotkeys 1 and 0). Pictures are referenced as Label
  Studio's local files (``/data/local-files/?d=<path under the document root>``; start Label Studio
  with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and
  ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``) or, with ``url_prefix``, as URLs under it.
* :func:`import_annotations` reads an export (``JSON`` with ``annotations``, or ``JSON_MIN`` with a
  ``label`` key per task) and journals the labels with the same checks as ``labels.csv``
  (:func:`~retinalab.active.oracle.validate_labels`): every bad task is listed, the good ones are kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

from ..active.oracle import CLASS_NAMES, LabelFileError, validate_labels
from ..active.store import journal, read_answers, write_answers
from ..utils.errors import InputMissingError
from ..utils.io import write_json_atomic
from ..utils.runs import run_lock
from .session import PendingRound, check_run, pending_round

#: the Label Studio labelling interface the exported tasks are made for
LABEL_CONFIG = """<View>
  <Header value="Round $round, query $query_id: is there an exudate in the patch?"/>
  <Image name="patch" value="$image" zoom="true"/>
  <Image name="photo" value="$photo" zoom="true"/>
  <Choices name="label" toName="patch" choice="single" showInline="true" required="true">
    <Choice value="exudate" hotkey="1"/>
    <Choice value="healthy" hotkey="0"/>
  </Choices>
</View>
"""


def _waiting(run: Path) -> PendingRound:
    check_run(run)
    pending = pending_round(run)
    if pending is None:
        raise InputMissingError(
            f"{run}: no round waits for labels (the run is stopped, or has not written its first queries: run "
            "`retinalab active --resume`)"
        )
    return pending


def _reference(path: Path, document_root: Path | None, url_prefix: str | None) -> str:
    root = (document_root or path.parents[2]).resolve()  # default: the run's queries/ folder
    try:
        rel = str(path.resolve().relative_to(root)).replace("\\", "/")
    except ValueError:
        raise InputMissingError(
            f"{path} is not under the Label Studio document root {root}; pass a --ls-document-root above it"
        ) from None
    if url_prefix:
        return url_prefix.rstrip("/") + "/" + quote(rel)
    return "/data/local-files/?d=" + quote(rel)


def export_tasks(
    run: str | Path,
    out: str | Path | None = None,
    document_root: str | Path | None = None,
    url_prefix: str | None = None,
) -> Path:
    """Write the waiting round's queries as Label Studio tasks (``out``, default
    ``queries/round_NNN/label_studio/tasks.json``) and ``label_config.xml`` beside them; returns the
    tasks file. ``document_root``: the folder Label Studio serves local files from (default: the run's
    ``queries`` folder)."""
    run = Path(run)
    pending = _waiting(run)
    out = Path(out) if out else pending.folder / "label_studio" / "tasks.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    root = Path(document_root) if document_root else None
    config = check_run(run)
    answers = read_answers(run)
    tasks = []
    for n, q in enumerate(pending.queries):
        data = {
            "image": _reference(pending.folder / q["patch_png"], root, url_prefix),
            "photo": _reference(pending.folder / q["image_png"], root, url_prefix),
            "query_id": q["query_id"],
            "round": pending.round,
            "item": int(q["item"]),
            "image_id": q.get("image_id", ""),
            "centre_y": int(q["centre_y"]),
            "centre_x": int(q["centre_x"]),
            "run": str(run),
            "answered_before": int(q["item"]) in answers,
        }
        task = {"id": n + 1, "data": data}
        p = q.get("probability")
        if p not in (None, ""):
            p = float(p)
            choice = CLASS_NAMES[int(p >= 0.5)]
            task["predictions"] = [
                {
                    "model_version": f"retinalab {config.get('acquisition', '')} round {pending.round - 1}".strip(),
                    "score": round(max(p, 1 - p), 4),
                    "result": [
                        {"from_name": "label", "to_name": "patch", "type": "choices", "value": {"choices": [choice]}}
                    ],
                }
            ]
            data["probability"] = round(p, 4)
        tasks.append(task)
    write_json_atomic(out, tasks)
    (out.parent / "label_config.xml").write_text(LABEL_CONFIG)
    return out


def _choice(task: dict) -> str:
    """The label word of one exported task ('' where it has no annotation)."""
    if "annotations" not in task:  # JSON_MIN: the choice under the control's name
        value = task.get("label", "")
        return value[0] if isinstance(value, list) and value else value if isinstance(value, str) else ""
    done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not done:
        return ""
    latest = max(done, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id") or 0))
    for result in latest.get("result") or []:
        if result.get("type") == "choices" and result.get("from_name", "label") == "label":
            choices = result.get("value", {}).get("choices") or []
            return choices[0] if choices else ""
    return ""


def import_annotations(run: str | Path, file: str | Path) -> tuple[int, int, list[str]]:
    """Journal the labels of a Label Studio export ``file`` for the run's waiting round.

    Returns:
        (labels journalled, queries still without a label, problems). Problems (a task of another round
        or run, a query never asked, an unknown label, one labelled twice differently) do not stop the
        good labels: they are journalled, and :class:`LabelFileError` lists the problems afterwards.
    """
    run, file = Path(run), Path(file)
    pending = _waiting(run)
    try:
        tasks = json.loads(file.read_text())
    except FileNotFoundError:
        raise InputMissingError(f"{file}: no such Label Studio export") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LabelFileError(f"{file}: not a Label Studio JSON export ({e})") from e
    if not isinstance(tasks, list):
        raise LabelFileError(f"{file}: a Label Studio export is a JSON list of tasks, not a {type(tasks).__name__}")
    rows, problems = [], []
    for n, task in enumerate(tasks, start=1):
        data = task.get("data", task) if isinstance(task, dict) else None
        if not isinstance(data, dict) or "query_id" not in data:
            problems.append(f"task {n}: no data.query_id (not a task exported by `retinalab label --export-ls`)")
            continue
        where = f"task {task.get('id', n)}"
        if str(data.get("round")) != str(pending.round):
            problems.append(
                f"{where}: {data['query_id']} is from round {data.get('round')}, not the round waiting for labels "
                f"({pending.round})"
            )
            continue
        rows.append((where, str(data["query_id"]), _choice(task)))
    with run_lock(run, "retinalab label --import-ls"):
        answers = read_answers(run)
        queries = pending.items
        wanted = {i for i in queries.values() if i not in answers}
        labels, bad, _ = validate_labels(rows, queries, wanted)
        journal(answers, labels, pending.round, "label-studio")
        if labels:
            write_answers(run, answers)
    open_ = sum(1 for i in queries.values() if i not in answers)
    problems += bad
    if problems:
        err = LabelFileError(
            f"{file}: "
            + "; ".join(problems)
            + f". The {len(labels)} valid labels were journalled; {open_} queries of round {pending.round} still have "
            "none."
        )
        err.partial = labels
        raise err
    return len(labels), open_, problems
