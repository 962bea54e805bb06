"""Records, errors and helpers shared by every dataset reader.

A reader turns one published dataset layout into a list of :class:`FundusRecord`. Readers never
decode images: they check that the files named by the layout exist and that the label files have
the expected columns, and report every problem with the file it concerns.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from ..utils.errors import UserError
from ..utils.registry import Registry

log = logging.getLogger(__name__)

#: The four DR lesions, in the order used for stacked masks (paper 001's L = 4 outputs).
LESIONS: tuple[str, ...] = ("MA", "HE", "EX", "SE")
#: Every structure a mask can exist for; the optic disc is never a lesion.
STRUCTURES: tuple[str, ...] = (*LESIONS, "OD")
#: What a clinician calls each structure (the labelling page asks its question in these words).
STRUCTURE_NAMES: dict[str, str] = {
    "MA": "microaneurysm",
    "HE": "haemorrhage",
    "EX": "hard exudate",
    "SE": "soft exudate",
    "OD": "optic disc",
}

OnError = Literal["raise", "skip"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")

#: dataset readers by name (``data.dataset: idrid``): ``reader(root, **reader_args) -> list[FundusRecord]``.
#: A reader is one decorated function (``@register_reader("mylab")``); a module outside retinalab is named
#: as ``dataset: mylab.readers:mylab`` and imported on first use.
READERS: Registry = Registry("dataset")
register_reader = READERS.register


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset folder or label file is missing where the layout says it should be."""


class DataFormatError(UserError, ValueError):
    """A file exists but its content is not what the layout promises (columns, size, decoding...)."""


@dataclass(frozen=True)
class FundusRecord:
    """One fundus photograph and what is known about it.

    Attributes:
        image_id: unique id within the dataset; includes the split where file names restart per
            split (IDRiD grading).
        image_path: absolute path of the photograph.
        masks: lesion/structure name -> mask path. A key that is present means the image is
            annotated for that structure; ``None`` means "annotated, no lesion" (empty mask).
            An empty dict means the image has no pixel annotation at all.
        grade: DR grade (ICDR 0-4; Messidor uses 0-3) or ``None`` when unlabelled.
        dme_risk: risk of macular oedema or ``None``.
        patient_id: patient identifier where the dataset has one (splits are by patient).
        split: the official split (``"train"``/``"test"``) or ``None`` when there is none.
        dataset: name of the reader that produced the record.
        meta: anything else the layout carries (e.g. EyePACS ``Usage``).
    """

    image_id: str
    image_path: Path
    masks: dict[str, Path | None] = field(default_factory=dict)
    grade: int | None = None
    dme_risk: int | None = None
    patient_id: str | None = None
    split: str | None = None
    dataset: str = ""
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def has_lesion_masks(self) -> bool:
        """True when the image is pixel-annotated for at least one DR lesion."""
        return any(k in self.masks for k in LESIONS)

    @property
    def group(self) -> str:
        """The unit that must not straddle splits: the patient where known, else the image."""
        return self.patient_id if self.patient_id is not None else self.image_id


class ErrorPolicy:
    """Raise on bad input, or (``on_error="skip"``) log it, count it and carry on.

    Args:
        on_error: ``"raise"`` (default everywhere) or ``"skip"``.
        context: a short name for log messages (dataset name).
    """

    def __init__(self, on_error: OnError = "raise", context: str = "") -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.context = context
        self.skipped: list[str] = []

    def __call__(self, error: Exception) -> None:
        """Handle one problem: raise it or record it."""
        if self.on_error == "raise":
            raise error
        self.skipped.append(str(error))
        log.warning("%sskipping: %s", f"[{self.context}] " if self.context else "", error)

    def summary(self) -> None:
        if self.skipped:
            log.warning(
                "%s%d item(s) skipped because of bad input (on_error='skip')",
                f"[{self.context}] " if self.context else "",
                len(self.skipped),
            )


def resolve_root(root: str | os.PathLike, marker: str | Sequence[str], dataset: str, hint: str) -> Path:
    """Find the folder that contains ``marker`` (a sub-folder or file name of the layout).

    Accepts ``root`` itself, one level above it (``root/<anything>/marker``) and the duplicated
    nested folder some unzip tools create (``marker/marker``).

    Raises:
        DatasetNotFoundError: naming the root and what was looked for.
    """
    root = Path(root).expanduser()
    markers = [marker] if isinstance(marker, str) else list(marker)
    if not root.is_dir():
        raise DatasetNotFoundError(f"{dataset}: root={str(root)!r} is not a folder. {hint}")
    candidates = [root]
    if root.name in markers:
        candidates.append(root.parent)
    candidates += sorted(p for p in root.iterdir() if p.is_dir())
    for cand in candidates:
        if any((cand / m).exists() for m in markers):
            return cand
    raise DatasetNotFoundError(
        f"{dataset}: none of {markers} found under root={str(root)!r} (nor one level below). {hint}"
    )


def denest(path: Path) -> Path:
    """Follow ``X/X`` duplicates created by some unzip tools: ``A. Segmentation/A. Segmentation``."""
    while (path / path.name).is_dir():
        path = path / path.name
    return path


def safe_join(root: Path, name: str, source: Path) -> Path:
    """Join a file name read from a label file to ``root``, refusing names that escape it.

    Raises:
        DataFormatError: for absolute names or ``..`` components.
    """
    rel = Path(str(name).strip())
    if rel.is_absolute() or ".." in rel.parts or str(name).strip() == "":
        raise DataFormatError(
            f"{source}: image name {name!r} is empty or escapes the dataset root ({root}); "
            "names must be relative paths inside it"
        )
    return root / rel


def read_table(path: Path, required: Sequence[str], dataset: str, **kwargs) -> pd.DataFrame:
    """Read a CSV/XLS label table, strip header whitespace, drop empty ``Unnamed`` columns.

    Raises:
        DatasetNotFoundError: if the file is missing.
        DataFormatError: if it cannot be parsed or lacks a required column.
    """
    if not path.is_file():
        raise DatasetNotFoundError(f"{dataset}: label file {path} is missing")
    try:
        if path.suffix.lower() in (".xls", ".xlsx"):
            df = pd.read_excel(path, dtype=str, **kwargs)
        else:
            df = pd.read_csv(path, dtype=str, skipinitialspace=True, **kwargs)
    except Exception as e:  # pandas raises many different types for malformed files
        raise DataFormatError(f"{dataset}: cannot read label file {path}: {e}") from e
    df.columns = [str(c).strip() for c in df.columns]
    df = df.loc[:, [c for c in df.columns if not (c.startswith("Unnamed") and df[c].isna().all())]]
    df = df.dropna(how="all")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataFormatError(f"{dataset}: label file {path} lacks column(s) {missing}; found {list(df.columns)}")
    return df


def parse_int(value: object, path: Path, row: int, column: str) -> int | None:
    """Parse an integer label cell; empty cells give ``None``."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    s = str(value).strip()
    if s == "" or s.lower() == "nan":
        return None
    try:
        return int(float(s))
    except ValueError as e:
        raise DataFormatError(f"{path}: row {row + 2}, column {column!r}: {value!r} is not an integer label") from e


def check_unique(records: Iterable[FundusRecord], dataset: str) -> list[FundusRecord]:
    """Refuse duplicated image ids (they would silently merge two images' patches)."""
    records = list(records)
    seen: dict[str, Path] = {}
    for r in records:
        if r.image_id in seen:
            raise DataFormatError(
                f"{dataset}: duplicated image id {r.image_id!r} ({seen[r.image_id]} and {r.image_path})"
            )
        seen[r.image_id] = r.image_path
    return records


def list_images(folder: Path) -> Iterator[Path]:
    """Image files in ``folder`` (not recursive), any case of suffix, no ``Thumbs.db``."""
    if not folder.is_dir():
        return
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            yield p
