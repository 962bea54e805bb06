"""Oracles: who gives the labels the active learner asks for (paper 002, section 3).

* :class:`SimulatedOracle` answers from the ground-truth masks (the paper's experiments).
* :class:`HumanOracle` writes the queries of a round to a folder for an ophthalmologist (each patch as
  a PNG, each photograph with the queried regions boxed and numbered, ``queries.csv`` and a
  ``labels.csv`` to fill in) and stops; the loop continues with ``--resume`` once ``labels.csv`` is
  filled in. Bad label files get an error that lists every bad row; the good rows are kept.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..errors import ConfigError, UserError
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


def write_csv_atomic(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    """Write a CSV via a temporary file and an atomic rename."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)
    return path


class HumanOracle:
    """Queries for a person, through files.

    Args:
        pool: the patch cache (for crops and image previews).
        folder: where ``round_NNN/`` query folders are written.
        crop_zoom: the patch PNGs are enlarged this many times for viewing.
    """

    def __init__(self, pool: ExudatePatches, folder: str | Path, crop_zoom: int = 4) -> None:
        self.pool = pool
        self.folder = Path(folder)
        self.crop_zoom = crop_zoom

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
        self.write_queries(d, items, scores)
        raise LabelsPending(d, len(items))

    @staticmethod
    def _queries(d: Path, items: Sequence[int]) -> dict[str, int]:
        with (d / "queries.csv").open(newline="") as f:
            queries = {row["query_id"]: int(row["item"]) for row in csv.DictReader(f)}
        if not {int(i) for i in items} <= set(queries.values()):
            raise LabelFileError(f"{d / 'queries.csv'} does not hold this round's queries; it was changed or belongs to another run")
        return queries

    @staticmethod
    def _filled(path: Path) -> bool:
        with path.open(newline="") as f:
            return any((row.get("label") or "").strip() for row in csv.DictReader(f))

    def write_queries(self, d: Path, items: Sequence[int], scores: Sequence[float] | None) -> None:
        """Write the patch crops, the boxed photographs, ``queries.csv`` and a blank ``labels.csv``."""
        (d / "patches").mkdir(parents=True, exist_ok=True)
        (d / "images").mkdir(exist_ok=True)
        pool, cfg = self.pool, self.pool.config
        rows, by_image = [], {}
        for q, item in enumerate(items):
            qid = f"q{q:04d}"
            img = int(pool.image[item])
            cy, cx = (int(v) for v in pool.centre[item])
            crop = np.asarray(pool.patches[item])
            crop = cv2.resize(crop, None, fx=self.crop_zoom, fy=self.crop_zoom, interpolation=cv2.INTER_NEAREST)
            name = f"patches/{qid}.png"
            _save_png(crop, d / name)
            image_id = pool.images[img]["image_id"]
            sheet = f"images/{image_id.replace('/', '__')}.png"
            by_image.setdefault(img, (sheet, []))[1].append((qid, cy, cx))
            value = None if scores is None else scores[q]
            score = "" if value is None or value != value else f"{float(value):.6g}"  # None/NaN: no score (random, initial)
            rows.append([qid, int(item), image_id, pool.images[img]["image_path"], cy, cx, cfg.patch_size, score, name, sheet])
        for img, (sheet, boxes) in by_image.items():
            view = pool.view(img).copy()
            s = view.shape[0] / cfg.image_size
            half = cfg.patch_size / 2
            for qid, cy, cx in boxes:
                p0 = (round((cx - half) * s), round((cy - half) * s))
                p1 = (round((cx + half) * s), round((cy + half) * s))
                cv2.rectangle(view, p0, p1, (0, 255, 255), 1)
                cv2.putText(view, qid[1:].lstrip("0") or "0", (p0[0], max(8, p0[1] - 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (255, 255, 0), 1)
            _save_png(view, d / sheet)
        header = ["query_id", "item", "image_id", "image_path", "centre_y", "centre_x", "patch_size", "score", "patch_png", "image_png"]
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
        problems, labels, flagged = [], {}, set()
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "query_id" not in reader.fieldnames or "label" not in reader.fieldnames:
                raise LabelFileError(f"{path}: needs the columns query_id,label (got {reader.fieldnames})")
            for line, row in enumerate(reader, start=2):
                qid, word = (row.get("query_id") or "").strip(), (row.get("label") or "").strip().lower()
                if qid not in queries:
                    problems.append(f"line {line}: query_id {qid!r} was never queried")
                    continue
                if queries[qid] not in wanted:
                    continue  # answered in an earlier resume: its label is in answers.json already
                if not word or qid in flagged:
                    continue  # missing ones are reported below
                if word not in LABEL_WORDS:
                    problems.append(f"line {line}: {qid} has unknown label {row['label']!r} (use {' or '.join(CLASS_NAMES)})")
                    flagged.add(qid)
                    continue
                item = queries[qid]
                if item in labels and labels[item] != LABEL_WORDS[word]:
                    problems.append(f"line {line}: {qid} is labelled twice with different labels")
                    flagged.add(qid)
                    labels.pop(item)
                    continue
                labels[item] = LABEL_WORDS[word]
        labels = {i: y for i, y in labels.items() if i in wanted}  # labels already journalled stay as they were
        missing = [q for q, item in queries.items() if item in wanted and item not in labels and q not in flagged]
        if missing:
            problems.append(f"{len(missing)} queries have no label: {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
        if problems:
            err = LabelFileError(f"{path}: " + "; ".join(problems) + f". The {len(labels)} valid labels are kept; fix the rest and resume.")
            err.partial = labels
            raise err
        return labels


def _save_png(arr: np.ndarray, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    Image.fromarray(arr).save(tmp)
    os.replace(tmp, path)
