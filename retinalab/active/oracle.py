"""Oracles: who gives the labels the active learner asks for (paper 002, section 3).

* :class:`SimulatedOracle` answers from the ground-truth masks (the paper's experiments).
* :class:`HumanOracle` writes the queries of a round to a folder for an ophthalmologist (each patch as
  a PNG, each photograph with the queried regions boxed and numbered, the plain photograph and the
  acquisition's heatmap over it for the labelling page, ``queries.csv`` with the model's probability
  and a ``labels.csv`` to fill in) and stops. The labels come back three ways, all into the loop's
  answers journal: the labelling page (``retinalab label``, :mod:`retinalab.labelling.server`),
  ``labels.csv`` (read here when the loop resumes) or a Label Studio export
  (:mod:`retinalab.labelling.label_studio`). Bad labels get an error that lists every bad row; the good
  rows are kept (:func:`validate_labels`, shared by the CSV and Label Studio readers).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

from ..utils.errors import ConfigError, UserError
from ..utils.io import save_png_atomic, write_csv_atomic
from .pool import CLASS_NAMES, UNKNOWN, ExudatePatches

#: accepted spellings of each class in ``labels.csv`` (case-insensitive)
LABEL_WORDS = {"healthy": 0, "0": 0, "h": 0, "normal": 0, "exudate": 1, "1": 1, "e": 1, "ex": 1}


class LabelsPending(Exception):
    """A human oracle has written queries and the loop must wait for ``labels.csv``."""

    def __init__(self, folder: Path, count: int) -> None:
        self.folder = folder
        self.count = count
        super().__init__(f"{count} queries written to {folder}; fill in {folder / 'labels.csv'} and resume")


class LabelFileError(UserError, ValueError):
    """``labels.csv`` has missing, unknown or unexpected labels (every bad row is listed)."""


#: what the loop tells a human oracle about a round's queries: ``describe(items, images)`` returns
#: p(exudate) of each item under the current model and, per image, its grid items and their
#: acquisition scores (the heatmap); None where the model is not trained yet (round 0)
Describe = Callable[
    [Sequence[int], Sequence[int]], "tuple[np.ndarray, dict[int, tuple[np.ndarray, np.ndarray]]] | None"
]


def validate_labels(
    rows: Iterable[tuple[str, str, str]],
    queries: dict[str, int],
    wanted: set[int],
) -> tuple[dict[int, int], list[str], set[str]]:
    """Check answers against a round's ``queries`` (query id -> pool item).

    Args:
        rows: ``(where, query_id, word)`` per answer, ``where`` naming its place in the file ("line 3",
            "task 12"); an empty ``word`` is an unanswered row.
        wanted: the items still to label (answers for others were journalled before and are skipped).

    Returns:
        the labels (item -> 0/1), the problems (one line each: a query never asked, an unknown word, a
        query labelled twice with different labels) and the flagged query ids (left out of the labels).
    """
    problems, labels, flagged, by = [], {}, set(), {}
    for where, qid, word in rows:
        qid, key = qid.strip(), word.strip().lower()
        if qid not in queries:
            problems.append(f"{where}: query_id {qid!r} was never queried")
            continue
        if queries[qid] not in wanted or not key or qid in flagged:
            continue  # answered before (journalled), unanswered (reported by the caller) or already flagged
        if key not in LABEL_WORDS:
            problems.append(f"{where}: {qid} has unknown label {word.strip()!r} (use {' or '.join(CLASS_NAMES)})")
            flagged.add(qid)
            continue
        item = queries[qid]
        if item in labels and labels[item] != LABEL_WORDS[key]:
            problems.append(f"{where}: {qid} is labelled twice with different labels (also at {by[qid]})")
            flagged.add(qid)
            labels.pop(item)
            continue
        labels[item], by[qid] = LABEL_WORDS[key], where
    return labels, problems, flagged


def read_queries(d: Path) -> list[dict[str, str]]:
    """The rows of a round folder's ``queries.csv``."""
    path = d / "queries.csv"
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise LabelFileError(f"{path}: cannot be read ({e.strerror or e})") from e
    if rows and not {"query_id", "item"} <= set(rows[0]):
        raise LabelFileError(
            f"{path}: needs the columns query_id and item; it was changed or is not a retinalab query file"
        )
    return rows


class SimulatedOracle:
    """Labels from the ground-truth masks, as stored in the patch cache."""

    def __init__(self, pool: ExudatePatches) -> None:
        self.pool = pool

    def __call__(self, items: Sequence[int], round_: int, scores: Sequence[float] | None = None) -> dict[int, int]:
        labels = {int(i): int(self.pool.labels[i]) for i in items}
        unknown = [i for i, y in labels.items() if y == UNKNOWN]
        if unknown:
            img = self.pool.images[int(self.pool.image[unknown[0]])]
            raise ConfigError(
                f"the simulated oracle has no ground truth for {len(unknown)} queried patches (e.g. of "
                f"{img['image_path']}: the image has no {self.pool.config.lesion} mask); use oracle: human"
            )
        return labels


class HumanOracle:
    """Queries for a person, through files.

    Args:
        pool: the patch cache (for crops and image previews).
        folder: where ``round_NNN/`` query folders are written.
        crop_zoom: the patch PNGs are enlarged this many times for viewing.
        describe: the model's view of the queries (:data:`Describe`): p(exudate) per query and the
            heatmap of each queried photograph; without it (or in round 0) neither is written.
    """

    def __init__(
        self, pool: ExudatePatches, folder: str | Path, crop_zoom: int = 4, describe: Describe | None = None
    ) -> None:
        self.pool = pool
        self.folder = Path(folder)
        self.crop_zoom = crop_zoom
        self.describe = describe

    def round_dir(self, round_: int) -> Path:
        return self.folder / f"round_{round_:03d}"

    def __call__(self, items: Sequence[int], round_: int, scores: Sequence[float] | None = None) -> dict[int, int]:
        """Labels of ``items`` from this round's ``labels.csv``; without one, write the queries and
        raise :class:`LabelsPending`. Queries once written are never rewritten (the annotator may be
        working on them)."""
        d = self.round_dir(round_)
        if (d / "queries.csv").is_file():
            self._queries(d, items)
            if (d / "labels.csv").is_file() and self._filled(d / "labels.csv"):
                return self.read_labels(d, items)
            raise LabelsPending(d, len(items))
        self.write_queries(d, items, scores, round_)
        raise LabelsPending(d, len(items))

    @staticmethod
    def _queries(d: Path, items: Sequence[int]) -> dict[str, int]:
        queries = {row["query_id"]: int(row["item"]) for row in read_queries(d)}
        if not {int(i) for i in items} <= set(queries.values()):
            raise LabelFileError(
                f"{d / 'queries.csv'} does not hold this round's queries; it was changed or belongs to another run"
            )
        return queries

    @staticmethod
    def _filled(path: Path) -> bool:
        with path.open(newline="") as f:
            return any((row.get("label") or "").strip() for row in csv.DictReader(f))

    def write_queries(self, d: Path, items: Sequence[int], scores: Sequence[float] | None, round_: int = 0) -> None:
        """Write the patch crops, the boxed and the plain photographs, the heatmaps, ``queries.csv`` and a
        blank ``labels.csv``."""
        (d / "patches").mkdir(parents=True, exist_ok=True)
        (d / "images").mkdir(exist_ok=True)
        pool, cfg = self.pool, self.pool.config
        images = sorted({int(pool.image[i]) for i in items})
        seen = self.describe(items, images) if self.describe is not None and round_ > 0 else None
        prob, heat = seen if seen is not None else (None, {})
        rows, by_image = [], {}
        for q, item in enumerate(items):
            qid = f"q{q:04d}"
            img = int(pool.image[item])
            cy, cx = (int(v) for v in pool.centre[item])
            crop = np.asarray(pool.patches[item])
            crop = cv2.resize(crop, None, fx=self.crop_zoom, fy=self.crop_zoom, interpolation=cv2.INTER_NEAREST)
            name = f"patches/{qid}.png"
            save_png_atomic(crop, d / name)
            image_id = pool.images[img]["image_id"]
            sheet = f"images/{image_id.replace('/', '__')}.png"
            by_image.setdefault(img, (sheet, []))[1].append((qid, cy, cx))
            value = None if scores is None else scores[q]
            score = (
                "" if value is None or value != value else f"{float(value):.6g}"
            )  # None/NaN: no score (random, initial)
            p = "" if prob is None else f"{float(prob[q]):.4f}"
            plain, overlay = (
                sheet.replace(".png", ".plain.png"),
                sheet.replace(".png", ".heat.png") if img in heat else "",
            )
            rows.append(
                [
                    qid,
                    int(item),
                    image_id,
                    pool.images[img]["image_path"],
                    cy,
                    cx,
                    cfg.patch_size,
                    score,
                    name,
                    sheet,
                    p,
                    plain,
                    overlay,
                    cfg.image_size,
                    *_heat_range(heat.get(img)),
                ]
            )
        for img, (sheet, boxes) in by_image.items():
            save_png_atomic(pool.view(img), d / sheet.replace(".png", ".plain.png"))
            if img in heat:
                save_png_atomic(heat_overlay(pool, *heat[img]), d / sheet.replace(".png", ".heat.png"))
            view = pool.view(img).copy()
            s = view.shape[0] / cfg.image_size
            half = cfg.patch_size / 2
            for qid, cy, cx in boxes:
                p0 = (round((cx - half) * s), round((cy - half) * s))
                p1 = (round((cx + half) * s), round((cy + half) * s))
                cv2.rectangle(view, p0, p1, (0, 255, 255), 1)
                cv2.putText(
                    view,
                    qid[1:].lstrip("0") or "0",
                    (p0[0], max(8, p0[1] - 2)),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    0.3,
                    (255, 255, 0),
                    1,
                )
            save_png_atomic(view, d / sheet)
        header = [
            "query_id",
            "item",
            "image_id",
            "image_path",
            "centre_y",
            "centre_x",
            "patch_size",
            "score",
            "patch_png",
            "image_png",
            "probability",
            "plain_png",
            "heat_png",
            "image_size",
            "heat_low",
            "heat_high",
        ]
        write_csv_atomic(d / "queries.csv", header, rows)
        if not (d / "labels.csv").is_file():
            write_csv_atomic(d / "labels.csv", ["query_id", "label"], [[r[0], ""] for r in rows])
        (d / "README.txt").write_text(
            f"{len(rows)} patches to label ({cfg.patch_size}x{cfg.patch_size} px of the preprocessed "
            f"{cfg.image_size} px field of view).\n"
            "Look at patches/<query_id>.png (enlarged) and images/*.png (the photograph, queried regions boxed "
            "and numbered).\nIn labels.csv write 'exudate' or 'healthy' (or 1 / 0) in the label column of every "
            "row, then run the same `retinalab active` command again with --resume.\n"
        )

    def read_labels(self, d: Path, items: Sequence[int]) -> dict[int, int]:
        """Parse ``labels.csv`` against ``queries.csv``; return the labels of ``items``.

        Raises:
            LabelFileError: listing every missing, unknown or unexpected row. ``partial`` on the error
                holds the rows that were valid (the loop keeps them).
        """
        queries = self._queries(d, items)
        wanted = {int(i) for i in items}
        path = d / "labels.csv"
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "query_id" not in reader.fieldnames or "label" not in reader.fieldnames:
                raise LabelFileError(f"{path}: needs the columns query_id,label (got {reader.fieldnames})")
            rows = [
                (f"line {line}", row.get("query_id") or "", row.get("label") or "")
                for line, row in enumerate(reader, start=2)
            ]
        labels, problems, flagged = validate_labels(rows, queries, wanted)
        labels = {i: y for i, y in labels.items() if i in wanted}  # labels already journalled stay as they were
        missing = [q for q, item in queries.items() if item in wanted and item not in labels and q not in flagged]
        if missing:
            problems.append(
                f"{len(missing)} queries have no label: {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}"
            )
        if problems:
            err = LabelFileError(
                f"{path}: "
                + "; ".join(problems)
                + f". The {len(labels)} valid labels are kept; fix the rest and resume."
            )
            err.partial = labels
            raise err
        return labels


def _heat_range(heat: tuple[np.ndarray, np.ndarray] | None) -> tuple[str, str]:
    """The lowest and highest score of a photograph's heatmap (its colour scale's ends), as text."""
    if heat is None or not len(heat[1]):
        return "", ""
    scores = np.nan_to_num(np.asarray(heat[1], np.float64), nan=0.0)
    return f"{scores.min():.6g}", f"{scores.max():.6g}"


def heat_overlay(pool: ExudatePatches, items: np.ndarray, scores: np.ndarray, alpha: float = 0.7) -> np.ndarray:
    """An RGBA picture of the preview's size, to lay over the photograph: each grid patch of ``items``
    painted with its acquisition score on magma, scaled from the image's lowest score (dark, nearly
    transparent) to its highest (pale yellow, ``alpha`` opaque); transparent where no patch lies."""
    from matplotlib import colormaps

    cfg = pool.config
    side = cfg.view_size
    value = np.full((side, side), np.nan)
    scores = np.nan_to_num(np.asarray(scores, np.float64), nan=0.0)
    lo, hi = (scores.min(), scores.max()) if len(scores) else (0.0, 1.0)
    scaled = (scores - lo) / (hi - lo) if hi > lo else np.ones_like(scores)
    s, half = side / cfg.image_size, cfg.patch_size / 2
    for item, v in zip(np.asarray(items), scaled, strict=True):
        cy, cx = (float(c) for c in pool.centre[int(item)])
        y0, y1 = max(0, round((cy - half) * s)), min(side, round((cy + half) * s))
        x0, x1 = max(0, round((cx - half) * s)), min(side, round((cx + half) * s))
        value[y0:y1, x0:x1] = np.fmax(value[y0:y1, x0:x1], v)
    painted = ~np.isnan(value)
    value = np.nan_to_num(value)
    rgba = colormaps["magma"](value)
    rgba[..., 3] = np.where(painted, alpha * (0.15 + 0.85 * value), 0.0)
    return (rgba * 255).round().astype(np.uint8)
