"""e-ophtha (OPHDIAT tele-medical network) reader.

Layout (the folder names really are spelled ``e_optha``)::

    e_optha_EX/EX/<patient>/<image>.jpg|.JPG        Annotation_EX/<patient>/<image>_EX.png
    e_optha_EX/healthy/<patient>/<image>.jpg
    e_optha_MA/MA/<patient>/<image>.jpg              Annotation_MA/<patient>/<image>.png
    e_optha_MA/healthy/<patient>/<image>.jpg

There is no official split: splits must be made by patient (the ``<patient>`` folder). Images in a
``healthy`` folder are annotated for that lesion with an empty mask. ``Thumbs.db`` files are ignored.
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
    list_images,
    register_reader,
    resolve_root,
)

HINT = (
    "Request e-ophtha from https://www.adcis.net/en/third-party/e-ophtha/ and extract "
    "e_optha_EX.zip / e_optha_MA.zip into the root folder (or run `retinalab synth eophtha --out DIR`)."
)
# lesion -> (top folder, lesion folder, annotation folder, mask-name suffix)
PARTS = {
    "EX": ("e_optha_EX", "EX", "Annotation_EX", "_EX"),
    "MA": ("e_optha_MA", "MA", "Annotation_MA", ""),
}

Part = Literal["EX", "MA"]


@register_reader("eophtha")
def read_eophtha(
    root: str | Path, parts: Sequence[Part] = ("EX", "MA"), on_error: OnError = "raise"
) -> list[FundusRecord]:
    """Read e-ophtha EX and/or MA.

    Args:
        root: folder holding ``e_optha_EX`` / ``e_optha_MA`` (or one level above it).
        parts: which parts to read.
        on_error: ``"skip"`` drops lesion images whose annotation is missing instead of raising.

    Returns:
        Records with ids ``<part>/<patient>/<image stem>`` and ``patient_id`` set.
    """
    policy = ErrorPolicy(on_error, "e-ophtha")
    tops = [PARTS[p][0] for p in parts]
    base = resolve_root(root, tops, "e-ophtha", HINT)
    records: list[FundusRecord] = []
    for part in parts:
        top_name, lesion_dir, ann_dir, suffix = PARTS[part]
        top = base / top_name
        if not top.is_dir():
            raise DatasetNotFoundError(f"e-ophtha: folder {top} is missing. {HINT}")
        if (top / top_name).is_dir():
            top = top / top_name
        for kind in (lesion_dir, "healthy"):
            kind_dir = top / kind
            if not kind_dir.is_dir():
                raise DatasetNotFoundError(f"e-ophtha: folder {kind_dir} is missing. {HINT}")
            for patient_dir in sorted(p for p in kind_dir.iterdir() if p.is_dir()):
                patient = patient_dir.name
                for img in list_images(patient_dir):
                    mask: Path | None = None
                    if kind == lesion_dir:
                        cands = sorted((top / ann_dir / patient).glob(f"{img.stem}{suffix}.*"))
                        cands = [c for c in cands if c.suffix.lower() in (".png", ".tif", ".bmp", ".jpg")]
                        if not cands:
                            policy(
                                DataFormatError(
                                    f"e-ophtha: lesion image {img} has no annotation "
                                    f"{top / ann_dir / patient / (img.stem + suffix + '.png')}"
                                )
                            )
                            continue
                        mask = cands[0]
                    records.append(
                        FundusRecord(
                            image_id=f"{part}/{patient}/{img.stem}",
                            image_path=img.resolve(),
                            masks={part: mask},
                            patient_id=patient,
                            dataset="eophtha",
                            meta={"part": part, "folder": kind},
                        )
                    )
    policy.summary()
    return check_unique(records, "e-ophtha")
