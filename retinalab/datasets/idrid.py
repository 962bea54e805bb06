"""IDRiD (Indian Diabetic Retinopathy Image Dataset) reader.

Layout (as published; ``root`` may be the folder holding ``A. Segmentation`` / ``B. Disease Grading``
or one level above it, and the nested duplicates ``A. Segmentation/A. Segmentation`` are accepted)::

    A. Segmentation/
      1. Original Images/{a. Training Set,b. Testing Set}/IDRiD_NN.jpg
      2. All Segmentation Groundtruths/{a. Training Set,b. Testing Set}/
         1. Microaneurysms/IDRiD_NN_MA.tif    2. Haemorrhages/IDRiD_NN_HE.tif    3. Hard Exudates/IDRiD_NN_EX.tif
         4. Soft Exudates/IDRiD_NN_SE.tif     5. Optic Disc/IDRiD_NN_OD.tif
    B. Disease Grading/
      1. Original Images/{a. Training Set,b. Testing Set}/IDRiD_NNN.jpg
      2. Groundtruths/{a. IDRiD_Disease Grading_Training Labels.csv,b. IDRiD_Disease Grading_Testing Labels.csv}

A missing mask file means the lesion is absent (empty mask): IDRiD ships e.g. only 26/14 soft-exudate
masks. Grading file names restart in each split, so grading ids carry the split.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from .base import (
    DataFormatError,
    DatasetNotFoundError,
    ErrorPolicy,
    FundusRecord,
    OnError,
    check_unique,
    denest,
    list_images,
    parse_int,
    read_table,
    register_reader,
    resolve_root,
    safe_join,
)

SEG = "A. Segmentation"
GRADING = "B. Disease Grading"
SPLITS = {"train": "a. Training Set", "test": "b. Testing Set"}
MASK_FOLDERS = {
    "MA": "1. Microaneurysms",
    "HE": "2. Haemorrhages",
    "EX": "3. Hard Exudates",
    "SE": "4. Soft Exudates",
    "OD": "5. Optic Disc",
}
GRADING_CSV = {
    "train": "a. IDRiD_Disease Grading_Training Labels.csv",
    "test": "b. IDRiD_Disease Grading_Testing Labels.csv",
}
HINT = (
    "Download IDRiD from https://ieee-dataport.org/open-access/indian-diabetic-retinopathy-image-dataset-idrid "
    "and extract 'A. Segmentation.zip' and 'B. Disease Grading.zip' into the root folder "
    "(or run `retinalab synth idrid --out DIR` for a synthetic copy)."
)

Subset = Literal["segmentation", "grading"]


@register_reader("idrid")
def read_idrid(
    root: str | Path,
    subsets: Sequence[Subset] = ("segmentation", "grading"),
    on_error: OnError = "raise",
) -> list[FundusRecord]:
    """Read IDRiD's segmentation and/or disease-grading parts.

    Args:
        root: extracted dataset folder (or one level above it).
        subsets: which parts to read; each one requested must be present.
        on_error: ``"skip"`` logs and drops rows whose image is missing instead of raising.

    Returns:
        Records with ids ``seg/<split>/IDRiD_NN`` and ``grading/<split>/IDRiD_NNN``.
    """
    policy = ErrorPolicy(on_error, "idrid")
    markers = [{"segmentation": SEG, "grading": GRADING}[s] for s in subsets]
    base = resolve_root(root, markers, "IDRiD", HINT)
    records: list[FundusRecord] = []
    if "segmentation" in subsets:
        records += _read_segmentation(base, policy)
    if "grading" in subsets:
        records += _read_grading(base, policy)
    policy.summary()
    return check_unique(records, "IDRiD")


def _part(base: Path, name: str) -> Path:
    part = base / name
    if not part.is_dir():
        raise DatasetNotFoundError(f"IDRiD: folder {part} is missing. {HINT}")
    return denest(part)


def _read_segmentation(base: Path, policy: ErrorPolicy) -> list[FundusRecord]:
    seg = _part(base, SEG)
    out = []
    for split, split_dir in SPLITS.items():
        img_dir = seg / "1. Original Images" / split_dir
        gt_dir = seg / "2. All Segmentation Groundtruths" / split_dir
        for d in (img_dir, gt_dir):
            if not d.is_dir():
                raise DatasetNotFoundError(f"IDRiD: folder {d} is missing. {HINT}")
        for img in list_images(img_dir):
            masks: dict[str, Path | None] = {}
            for lesion, folder in MASK_FOLDERS.items():
                cands = [p for p in (gt_dir / folder).glob(f"{img.stem}_{lesion}.*")]
                masks[lesion] = sorted(cands)[0] if cands else None
            out.append(
                FundusRecord(
                    image_id=f"seg/{split}/{img.stem}",
                    image_path=img.resolve(),
                    masks=masks,
                    # Every segmentation image shows DR; its exact grade is not published with it.
                    grade=None,
                    split=split,
                    dataset="idrid",
                    meta={"subset": "segmentation"},
                )
            )
        if not any(r.split == split for r in out):
            raise DatasetNotFoundError(f"IDRiD: no images in {img_dir}. {HINT}")
    return out


def _read_grading(base: Path, policy: ErrorPolicy) -> list[FundusRecord]:
    grading = _part(base, GRADING)
    out = []
    for split, split_dir in SPLITS.items():
        img_dir = grading / "1. Original Images" / split_dir
        csv = grading / "2. Groundtruths" / GRADING_CSV[split]
        if not img_dir.is_dir():
            raise DatasetNotFoundError(f"IDRiD: folder {img_dir} is missing. {HINT}")
        df = read_table(csv, ["Image name", "Retinopathy grade", "Risk of macular edema"], "IDRiD")
        present = {p.stem: p for p in list_images(img_dir)}
        for i, row in enumerate(df.itertuples(index=False)):
            name = str(row[df.columns.get_loc("Image name")]).strip()
            try:
                stem = Path(safe_join(img_dir, name, csv).name).stem
                if stem not in present:
                    raise DataFormatError(
                        f"{csv}: row {i + 2} names image {name!r}, but {img_dir / (name + '.jpg')} does not exist"
                    )
                grade = parse_int(row[df.columns.get_loc("Retinopathy grade")], csv, i, "Retinopathy grade")
                dme = parse_int(row[df.columns.get_loc("Risk of macular edema")], csv, i, "Risk of macular edema")
            except DataFormatError as e:
                policy(e)
                continue
            out.append(
                FundusRecord(
                    image_id=f"grading/{split}/{stem}",
                    image_path=present[stem].resolve(),
                    grade=grade,
                    dme_risk=dme,
                    split=split,
                    dataset="idrid",
                    meta={"subset": "grading"},
                )
            )
    return out
