"""A generic layout for your own photographs ("bring your own data").

Layout::

    <root>/labels.csv                    optional: image[,grade][,referable][,patient][,split]
    <root>/**/<image>.{jpg,jpeg,png,tif,tiff}   any size, nested folders allowed
    <root>/masks/<lesion>/<image stem>.png      optional lesion masks (MA, HE, EX, SE, OD), any subset

* ``image`` is the path relative to ``root`` (``clinic_a/0001.jpg``), or just the file name or stem
  when that is unique. Images that ``labels.csv`` does not list, and rows with empty labels, are
  unlabelled data.
* ``grade`` is the ICDR grade 0-4; ``referable`` (0/1) may be given instead where only that is known;
  ``patient`` keeps a patient's images in one split; ``split`` is ``train`` or ``test`` (an official
  test split, used with ``split_mode: official``).
* An image is annotated for a lesion when ``masks/<lesion>/`` holds a mask with its stem (``.png``,
  ``.tif``, ``.tiff``, ``.jpg``); an image without lesions of that kind needs an all-black mask.
  Masks are "any channel > 0".

Image ids are the paths relative to ``root`` without the suffix (``clinic_a/0001``).
"""

from __future__ import annotations

from pathlib import Path

from .base import (
    IMAGE_SUFFIXES,
    STRUCTURES,
    DataFormatError,
    DatasetNotFoundError,
    ErrorPolicy,
    FundusRecord,
    OnError,
    check_unique,
    parse_int,
    read_table,
    register_reader,
)

HINT = (
    "Put the photographs under the root (nested folders are fine), optionally with labels.csv "
    "(columns image, grade, referable, patient, split) and masks/<MA|HE|EX|SE|OD>/<stem>.png; "
    "`retinalab synth folder --out DIR` writes an example."
)
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
SPLITS = ("train", "test")


def _images(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not p.name.startswith(".")
        and p.relative_to(root).parts[0] not in ("masks", "_truth")  # _truth: the synthetic generator's hidden masks
    )


@register_reader("folder")
def read_folder(root: str | Path, labels: str = "labels.csv", on_error: OnError = "raise") -> list[FundusRecord]:
    """Read the generic layout (see the module docstring).

    Args:
        root: the folder.
        labels: label file name inside ``root`` (optional: without it every image is unlabelled).
        on_error: ``"skip"`` drops label rows naming missing images instead of raising.

    Raises:
        DatasetNotFoundError: no folder or no image in it.
        DataFormatError: a label row naming no image (or several), a grade outside 0-4, a referable
            value other than 0/1, a split other than train/test, a duplicated row, a mask folder
            named after no known lesion, or a mask whose image does not exist.
    """
    policy = ErrorPolicy(on_error, "folder")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DatasetNotFoundError(f"folder: root={str(base)!r} is not a folder. {HINT}")
    files = _images(base)
    if not files:
        raise DatasetNotFoundError(f"folder: no image ({', '.join(IMAGE_SUFFIXES)}) under {base}. {HINT}")
    by_rel = {p.relative_to(base).as_posix(): p for p in files}
    by_name: dict[str, list[Path]] = {}
    for p in files:
        by_name.setdefault(p.name, []).append(p)
        by_name.setdefault(p.stem, []).append(p)
    info: dict[Path, dict] = {}
    table = base / labels
    if table.is_file():
        df = read_table(table, ["image"], "folder")
        cols = set(df.columns)
        for i, row in enumerate(df.to_dict("records")):
            try:
                name = str(row["image"]).strip()
                hits = [by_rel[name]] if name in by_rel else by_name.get(name, [])
                if not hits:
                    raise DataFormatError(f"{table}: row {i + 2} names image {name!r}, which is not under {base}")
                if len(hits) > 1:
                    raise DataFormatError(
                        f"{table}: row {i + 2}: {name!r} matches {len(hits)} images; use the path relative to the root"
                    )
                path = hits[0]
                if path in info:
                    raise DataFormatError(f"{table}: row {i + 2}: image {name!r} is listed twice")
                grade = parse_int(row.get("grade"), table, i, "grade") if "grade" in cols else None
                if grade is not None and not 0 <= grade <= 4:
                    raise DataFormatError(f"{table}: row {i + 2}: grade {grade} is outside 0-4 (ICDR)")
                referable = parse_int(row.get("referable"), table, i, "referable") if "referable" in cols else None
                if referable is not None and referable not in (0, 1):
                    raise DataFormatError(f"{table}: row {i + 2}: referable must be 0 or 1, got {referable}")
                split = str(row.get("split") or "").strip().lower() if "split" in cols else ""
                split = "" if split == "nan" else split
                if split and split not in SPLITS:
                    raise DataFormatError(
                        f"{table}: row {i + 2}: split {row.get('split')!r} is not one of {list(SPLITS)}"
                    )
                patient = str(row.get("patient") or "").strip() if "patient" in cols else ""
                patient = "" if patient == "nan" else patient
            except DataFormatError as e:
                policy(e)
                continue
            info[path] = {"grade": grade, "referable": referable, "split": split or None, "patient": patient or None}
    masks = _masks(base, files)
    records = []
    for p in files:
        meta_info = info.get(p, {})
        rel = p.relative_to(base)
        meta = {}
        if meta_info.get("referable") is not None:
            meta["referable"] = str(meta_info["referable"])
        records.append(
            FundusRecord(
                image_id=rel.with_suffix("").as_posix(),
                image_path=p.resolve(),
                masks=masks.get(p, {}),
                grade=meta_info.get("grade"),
                patient_id=meta_info.get("patient"),
                split=meta_info.get("split"),
                dataset="folder",
                meta=meta,
            )
        )
    policy.summary()
    return check_unique(records, "folder")


def _masks(base: Path, files: list[Path]) -> dict[Path, dict[str, Path | None]]:
    mask_root = base / "masks"
    out: dict[Path, dict[str, Path | None]] = {}
    if not mask_root.is_dir():
        return out
    stems: dict[str, list[Path]] = {}
    for p in files:
        stems.setdefault(p.stem, []).append(p)
    for lesion_dir in sorted(d for d in mask_root.iterdir() if d.is_dir()):
        lesion = lesion_dir.name.upper()
        if lesion not in STRUCTURES:
            raise DataFormatError(f"folder: mask folder {lesion_dir} is not one of {list(STRUCTURES)}")
        for m in sorted(lesion_dir.iterdir()):
            if not m.is_file() or m.suffix.lower() not in MASK_SUFFIXES or m.name.startswith("."):
                continue
            owners = stems.get(m.stem, [])
            if not owners:
                raise DataFormatError(f"folder: mask {m} has no image named {m.stem}.* under {base}")
            if len(owners) > 1:
                raise DataFormatError(
                    f"folder: mask {m} matches {len(owners)} images named {m.stem}.*; image stems must be unique to "
                    "carry masks"
                )
            out.setdefault(owners[0], {})[lesion] = m
    return out
