"""``retinalab check-data``: validate a dataset without training.

Reads the layout with the dataset's reader (bad label rows are collected, not fatal), then decodes
every photograph and mask in parallel and reports:

* problems (exit code 1): label rows that name no image or hold bad values, photographs that do not
  decode, photographs with no field of view (not a fundus photograph, or black), masks that do not
  decode or whose size differs from the photograph, identical photographs (by content hash) in two
  splits, patients with photographs in two splits;
* warnings: masks with no positive pixel (fine for "annotated, no lesion", suspicious otherwise),
  identical photographs within one split;
* counts per split, grade and lesion (annotated / with positive pixels).

The report is printed, written as ``check.json``, and a contact sheet (``contact_sheet.png``) shows a
sample of photographs with their masks overlaid, one colour per lesion, so a person can eyeball them.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from .datasets import STRUCTURES, DataFormatError, FundusRecord, read_dataset
from .preprocessing.building import parallel_map
from .preprocessing.fundus import find_fov, load_fundus
from .preprocessing.io import read_image, read_mask
from .utils.io import save_png_atomic, write_json_atomic
from .viz import lesion_overlay

log = logging.getLogger(__name__)


@dataclass
class Finding:
    """One problem or warning. ``files`` holds every file involved (a group of duplicates can be
    hundreds of photographs): all of them go to check.json, the message names the first few."""

    kind: str
    file: str
    message: str
    files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "file": self.file, "message": self.message}
        if self.files:
            d["files"] = self.files
        return d


def _names(paths: list[str], shown: int = 3) -> str:
    """``a, b, c and 513 more`` (the full list goes to check.json)."""
    head = ", ".join(paths[:shown])
    return head if len(paths) <= shown else f"{head} and {len(paths) - shown} more (all in check.json)"


@dataclass
class Report:
    dataset: str
    root: str
    images: int = 0
    counts: dict[str, Any] = field(default_factory=dict)
    problems: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "root": self.root,
            "ok": self.ok,
            "images": self.images,
            "counts": self.counts,
            "problems": [f.as_dict() for f in self.problems],
            "warnings": [f.as_dict() for f in self.warnings],
        }

    def text(self, per_kind: int = 3) -> str:
        """The summary ``retinalab check-data`` prints: counts, then per kind of problem and warning
        at most ``per_kind`` examples (the full lists are in check.json)."""
        lines = [f"{self.dataset} at {self.root}: {self.images} photographs"]
        for name, counter in self.counts.items():
            lines.append(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in counter.items()))
        for title, items in (("PROBLEMS", self.problems), ("warnings", self.warnings)):
            if not items:
                continue
            by_kind = Counter(f.kind for f in items)
            lines.append(f"{title}: " + ", ".join(f"{k} x{n}" for k, n in by_kind.items()))
            for kind, n in by_kind.items():
                lines += [f"  [{kind}] {f.message}" for f in [f for f in items if f.kind == kind][:per_kind]]
                if n > per_kind:
                    lines.append(f"  [{kind}] ... {n - per_kind} more in check.json")
        lines.append("OK: no problems found" if self.ok else f"FAILED: {len(self.problems)} problem(s)")
        return "\n".join(lines)


def _check_one(record: FundusRecord) -> dict[str, Any]:
    """Decode one photograph and its masks (in a worker)."""
    out: dict[str, Any] = {"image_id": record.image_id, "problems": [], "warnings": [], "positive": {}, "sha1": None}
    path = Path(record.image_path)
    try:
        out["sha1"] = hashlib.sha1(path.read_bytes()).hexdigest()
        image, full = read_image(path, min_side=512)
    except (DataFormatError, OSError) as e:
        out["problems"].append(("undecodable", str(path), str(e) if str(path) in str(e) else f"{path}: {e}"))
        return out
    try:
        find_fov(image)
    except ValueError as e:
        out["problems"].append(("no_field_of_view", str(path), f"{path}: {e} (is this a fundus photograph?)"))
    for lesion, mask_path in sorted(record.masks.items()):
        if mask_path is None:
            out["positive"][lesion] = False
            continue
        try:
            mask = read_mask(Path(mask_path), full, path)
        except DataFormatError as e:
            kind = "mask_size" if "but its image" in str(e) else "mask_undecodable"
            out["problems"].append((kind, str(mask_path), str(e)))
            continue
        out["positive"][lesion] = bool(mask.any())
        if not mask.any():
            out["warnings"].append(
                (
                    "mask_empty",
                    str(mask_path),
                    f"{mask_path}: no positive pixel (fine if {record.image_id} has no {lesion})",
                )
            )
    return out


def _capture_reader_errors(
    dataset: str, root: str | Path, reader_args: dict[str, Any]
) -> tuple[list[FundusRecord], list[str]]:
    """Read with ``on_error="skip"``, collecting the messages of the rows that were skipped."""
    messages: list[str] = []

    class Grab(logging.Handler):
        def emit(self, rec: logging.LogRecord) -> None:
            msg = rec.getMessage()
            if "skipping: " in msg:
                messages.append(msg.split("skipping: ", 1)[1])

    handler = Grab(logging.WARNING)
    logger = logging.getLogger("retinalab.datasets.base")
    logger.addHandler(handler)
    try:
        records = read_dataset(dataset, root, on_error="skip", **reader_args)
    finally:
        logger.removeHandler(handler)
    return records, messages


def check_dataset(
    dataset: str,
    root: str | Path,
    reader_args: dict[str, Any] | None = None,
    out_dir: str | Path | None = None,
    sample: int = 16,
    thumb: int = 192,
    workers: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> Report:
    """Validate ``dataset`` at ``root`` (see the module docstring); write ``check.json`` and
    ``contact_sheet.png`` to ``out_dir`` when given.

    Raises:
        DatasetNotFoundError: the layout is not there at all (nothing to check).
    """
    report = Report(dataset, str(root))
    records, row_errors = _capture_reader_errors(dataset, root, dict(reader_args or {}))
    report.problems += [Finding("label_row", _first_path(m), m) for m in row_errors]
    report.images = len(records)
    results: dict[str, dict[str, Any]] = {}
    bar = tqdm(total=len(records), desc="Checking photographs", unit="img", disable=not progress)
    try:
        with parallel_map(_check_one, records, workers) as it:
            for res in it:
                results[res["image_id"]] = res
                bar.update()
    finally:
        bar.close()
    for r in records:
        res = results[r.image_id]
        report.problems += [Finding(*p) for p in res["problems"]]
        report.warnings += [Finding(*w) for w in res["warnings"]]
    _duplicates(records, results, report)
    _patients(records, report)
    report.counts = _counts(records, results)
    if out_dir is not None:
        out = Path(out_dir)
        write_json_atomic(out / "check.json", report.as_dict())
        sheet = contact_sheet(records, results, sample, thumb, seed)
        if sheet is not None:
            save_png_atomic(sheet, out / "contact_sheet.png")
    return report


def _first_path(message: str) -> str:
    head = message.split(": ", 1)[0]
    return head if "/" in head or "\\" in head else ""


def _duplicates(records: list[FundusRecord], results: dict[str, dict], report: Report) -> None:
    by_hash: dict[str, list[FundusRecord]] = defaultdict(list)
    for r in records:
        h = results[r.image_id]["sha1"]
        if h:
            by_hash[h].append(r)
    for same in by_hash.values():
        if len(same) < 2:
            continue
        paths = [str(r.image_path) for r in same]
        splits = {r.split for r in same if r.split}
        if len(splits) > 1:
            report.problems.append(
                Finding(
                    "duplicate_across_splits",
                    paths[0],
                    f"{len(paths)} identical photographs in splits {sorted(splits)}: {_names(paths)}",
                    paths,
                )
            )
        else:
            report.warnings.append(
                Finding("duplicate", paths[0], f"{len(paths)} identical photographs: {_names(paths)}", paths)
            )


def _patients(records: list[FundusRecord], report: Report) -> None:
    splits: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r.patient_id is not None and r.split:
            splits[r.patient_id].add(r.split)
    for patient, s in sorted(splits.items()):
        if len(s) > 1:
            ids = [r.image_id for r in records if r.patient_id == patient]
            report.problems.append(
                Finding(
                    "patient_in_two_splits",
                    "",
                    f"patient {patient!r} has {len(ids)} photographs in splits {sorted(s)}: {_names(ids)}",
                    ids,
                )
            )


def _counts(records: list[FundusRecord], results: dict[str, dict]) -> dict[str, Any]:
    split = Counter(r.split or "none" for r in records)
    grade = Counter("unlabelled" if r.grade is None else str(r.grade) for r in records)
    lesions: dict[str, str] = {}
    for lesion in STRUCTURES:
        annotated = [r for r in records if lesion in r.masks]
        if annotated:
            positive = sum(1 for r in annotated if results[r.image_id]["positive"].get(lesion))
            lesions[lesion] = f"{len(annotated)} annotated / {positive} with lesion pixels"
    return {"split": dict(sorted(split.items())), "grade": dict(sorted(grade.items())), "lesions": lesions}


def contact_sheet(
    records: list[FundusRecord], results: dict[str, dict], sample: int = 16, thumb: int = 192, seed: int = 0
) -> np.ndarray | None:
    """A grid of ``sample`` photographs (those with masks first) with their masks overlaid, each
    ``thumb`` px square and captioned with its id. Shape: ``rows*thumb x cols*thumb x 3``."""
    ok = [r for r in records if not results[r.image_id]["problems"]]
    if not ok or sample <= 0:
        return None
    rng = np.random.default_rng(seed)
    masked = [r for r in ok if r.masks]
    plain = [r for r in ok if not r.masks]
    order = [masked[i] for i in rng.permutation(len(masked))] + [plain[i] for i in rng.permutation(len(plain))]
    chosen = order[:sample]
    cols = math.ceil(math.sqrt(len(chosen)))
    rows = math.ceil(len(chosen) / cols)
    sheet = np.zeros((rows * thumb, cols * thumb, 3), np.uint8)
    lesions = [les for les in STRUCTURES if les != "OD"]
    for k, r in enumerate(chosen):
        try:
            pre = load_fundus(r, thumb, structures=tuple(lesions))
        except (DataFormatError, ValueError) as e:
            log.warning("contact sheet: %s", e)
            continue
        tile = pre.image
        present = [les for les in lesions if les in pre.masks]
        if present:
            tile = lesion_overlay(tile, np.stack([pre.masks[les].astype(np.float32) for les in present]), present, 0.8)
        tile = np.ascontiguousarray(tile)
        cv2.putText(
            tile, r.image_id[-24:], (3, thumb - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA
        )
        y, x = divmod(k, cols)
        sheet[y * thumb : (y + 1) * thumb, x * thumb : (x + 1) * thumb] = tile
    return sheet
