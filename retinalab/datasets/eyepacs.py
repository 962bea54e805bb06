"""EyePACS (Kaggle Diabetic Retinopathy Detection, 2015) reader.

Layout::

    trainLabels.csv                  image,level          (names without extension: 10_left)
    train/<id>_{left,right}.jpeg
    retinopathy_solution.csv         image,level,Usage    (optional; Usage = Public / Private)
    test/<id>_{left,right}.jpeg      (optional)

The patient id is the number before ``_left`` / ``_right``: both eyes of a patient share a split.
"""

from __future__ import annotations

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
    resolve_root,
    safe_join,
)

HINT = (
    "Download the Kaggle 'diabetic-retinopathy-detection' files, join and extract train.zip.00x "
    "into 'train/' next to trainLabels.csv (or run `retinalab synth eyepacs --out DIR`)."
)
SUFFIXES = (".jpeg", ".jpg", ".png", ".tif", ".tiff")


@register_reader("eyepacs")
def read_eyepacs(root: str | Path, include_test: bool = True, on_error: OnError = "raise") -> list[FundusRecord]:
    """Read the EyePACS training set and, when present and asked for, the labelled test set.

    Args:
        root: folder holding ``trainLabels.csv`` and ``train/`` (or one level above it).
        include_test: also read ``test/`` with ``retinopathy_solution.csv`` when both exist.
        on_error: ``"skip"`` drops CSV rows whose image file is absent instead of raising.
    """
    policy = ErrorPolicy(on_error, "eyepacs")
    base = resolve_root(root, "trainLabels.csv", "EyePACS", HINT)
    records = _read_split(base, "train", base / "trainLabels.csv", policy)
    sol = base / "retinopathy_solution.csv"
    if include_test and (base / "test").is_dir() and sol.is_file():
        records += _read_split(base, "test", sol, policy)
    policy.summary()
    return check_unique(records, "EyePACS")


def _read_split(base: Path, split: str, csv: Path, policy: ErrorPolicy) -> list[FundusRecord]:
    img_dir = base / split
    if not img_dir.is_dir():
        raise DatasetNotFoundError(f"EyePACS: folder {img_dir} is missing. {HINT}")
    required = ["image", "level"] + (["Usage"] if split == "test" else [])
    df = read_table(csv, required, "EyePACS")
    # One directory listing instead of 35k stat calls.
    present: dict[str, Path] = {}
    for p in img_dir.iterdir():
        if p.suffix.lower() in SUFFIXES:
            present.setdefault(p.stem, p)
    out = []
    names = df["image"].tolist()
    levels = df["level"].tolist()
    usages = df["Usage"].tolist() if "Usage" in df.columns else [None] * len(df)
    for i, (name, level, usage) in enumerate(zip(names, levels, usages, strict=True)):
        try:
            stem = str(name).strip()
            safe_join(img_dir, stem, csv)
            if stem not in present:
                raise DataFormatError(
                    f"{csv}: row {i + 2} names image {stem!r}, but no {img_dir / (stem + '.jpeg')} exists"
                )
            grade = parse_int(level, csv, i, "level")
        except DataFormatError as e:
            policy(e)
            continue
        meta = {"Usage": str(usage)} if usage is not None else {}
        out.append(
            FundusRecord(
                image_id=f"{split}/{stem}",
                image_path=present[stem].resolve(),
                grade=grade,
                patient_id=stem.rsplit("_", 1)[0],
                split=split,
                dataset="eyepacs",
                meta=meta,
            )
        )
    return out
