"""Messidor reader.

Layout::

    Base11/ ... Base34/            100 ``.tif`` images each
    Base11/Annotation_Base11.xls   sheet ``Feuil1``: Image name, Ophthalmologic department,
                                   Retinopathy grade (0-3), Risk of macular edema
    (Annotation_BaseNN.xls may also sit next to the Base folders; a ``.csv`` export is accepted;
    the corrected workbooks ``Annotation_BaseNN_update20161024.xls`` take precedence.)

Messidor has no patient ids and no official split.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import (
    DataFormatError,
    DatasetNotFoundError,
    ErrorPolicy,
    FundusRecord,
    OnError,
    check_unique,
    parse_int,
    read_table,
    register_reader,
    safe_join,
)

HINT = (
    "Download Messidor from https://www.adcis.net/en/third-party/messidor/ and extract the BaseNN "
    "archives into the root folder (or run `retinalab synth messidor --out DIR`)."
)
REQUIRED = ["Image name", "Retinopathy grade", "Risk of macular edema"]
BASE_RE = re.compile(r"^Base\d\d$")


def _find_bases(root: Path) -> list[Path]:
    for cand in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        bases = sorted(p for p in cand.iterdir() if p.is_dir() and BASE_RE.match(p.name))
        if bases:
            return bases
    return []


def _annotation(base: Path) -> Path | None:
    names = [f"Annotation_{base.name}_update20161024", f"Annotation_{base.name}"]
    for folder in (base, base.parent):
        for name in names:
            for ext in (".xls", ".xlsx", ".csv"):
                if (folder / (name + ext)).is_file():
                    return folder / (name + ext)
    return None


@register_reader("messidor")
def read_messidor(root: str | Path, on_error: OnError = "raise") -> list[FundusRecord]:
    """Read every ``BaseNN`` folder with its annotation workbook.

    Args:
        root: folder holding the ``BaseNN`` folders (or one level above it).
        on_error: ``"skip"`` drops rows whose image is absent instead of raising.
    """
    policy = ErrorPolicy(on_error, "messidor")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"Messidor: root={str(root)!r} is not a folder. {HINT}")
    bases = _find_bases(root)
    if not bases:
        raise DatasetNotFoundError(f"Messidor: no BaseNN folders under root={str(root)!r}. {HINT}")
    records: list[FundusRecord] = []
    for base in bases:
        ann = _annotation(base)
        if ann is None:
            raise DatasetNotFoundError(
                f"Messidor: {base} has no Annotation_{base.name}.xls (or .csv) beside it. {HINT}"
            )
        kwargs = {"sheet_name": 0} if ann.suffix.lower() != ".csv" else {}
        df = read_table(ann, REQUIRED, "Messidor", **kwargs)
        for i, row in enumerate(df.to_dict("records")):
            try:
                name = str(row["Image name"]).strip()
                path = safe_join(base, name, ann)
                if not path.is_file():
                    raise DataFormatError(f"{ann}: row {i + 2} names image {name!r}, but {path} does not exist")
                grade = parse_int(row["Retinopathy grade"], ann, i, "Retinopathy grade")
                dme = parse_int(row["Risk of macular edema"], ann, i, "Risk of macular edema")
            except DataFormatError as e:
                policy(e)
                continue
            dept = row.get("Ophthalmologic department")
            records.append(
                FundusRecord(
                    image_id=f"{base.name}/{path.stem}",
                    image_path=path.resolve(),
                    grade=grade,
                    dme_risk=dme,
                    dataset="messidor",
                    meta={"base": base.name, "department": str(dept) if dept is not None else ""},
                )
            )
    policy.summary()
    return check_unique(records, "Messidor")
