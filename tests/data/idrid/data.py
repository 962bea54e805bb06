"""Build a tiny copy of IDRiD's published layout (A. Segmentation + B. Disease Grading).

Planted quirks: masks as red RGB, palette and 0/1 images; a missing soft-exudate mask; grading CSVs
with a trailing-space header and empty ``Unnamed`` columns; grading names restarting per split.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..common import SIZE, fundus, save_jpg, save_mask, square_mask

SEG = "A. Segmentation"
GRAD = "B. Disease Grading"
SPLITS = {"train": "a. Training Set", "test": "b. Testing Set"}
FOLDERS = {
    "MA": "1. Microaneurysms",
    "HE": "2. Haemorrhages",
    "EX": "3. Hard Exudates",
    "SE": "4. Soft Exudates",
    "OD": "5. Optic Disc",
}
CSV = {"train": "a. IDRiD_Disease Grading_Training Labels.csv", "test": "b. IDRiD_Disease Grading_Testing Labels.csv"}
#: lesion centres (y, x) planted in every segmentation image, in original pixels
LESION_AT = {"MA": (20, 30), "HE": (40, 60), "EX": (30, 45), "SE": (25, 55), "OD": (32, 70)}
STYLES = {"MA": "red", "HE": "palette", "EX": "binary", "SE": "red", "OD": "red"}


def make_idrid(
    root: Path,
    seg: tuple[int, int] = (3, 2),
    grades: dict[str, list[int]] | None = None,
    nested: bool = False,
) -> Path:
    """Write the layout under ``root`` and return ``root``.

    Args:
        seg: number of segmentation images in train/test (numbered on, as IDRiD does).
        grades: grade per grading image per split (names restart at IDRiD_001 per split).
        nested: put each part inside a duplicate folder (``A. Segmentation/A. Segmentation``).
    """
    grades = grades or {"train": [0, 2, 0, 4], "test": [0, 1]}
    seg_dir = root / SEG / SEG if nested else root / SEG
    grad_dir = root / GRAD / GRAD if nested else root / GRAD
    n = 0
    for split, count in zip(("train", "test"), seg, strict=True):
        for _ in range(count):
            n += 1
            stem = f"IDRiD_{n:02d}"
            save_jpg(seg_dir / "1. Original Images" / SPLITS[split] / f"{stem}.jpg", fundus(seed=n))
            for lesion, folder in FOLDERS.items():
                if lesion == "SE" and n % 2 == 0:
                    continue  # IDRiD lacks many SE masks: missing file = no lesion
                y, x = LESION_AT[lesion]
                path = seg_dir / "2. All Segmentation Groundtruths" / SPLITS[split] / folder / f"{stem}_{lesion}.tif"
                save_mask(path, square_mask(SIZE, y, x), STYLES[lesion])
    for s_idx, (split, gs) in enumerate(grades.items()):
        rows = []
        for k, g in enumerate(gs, start=1):
            stem = f"IDRiD_{k:03d}"  # names restart per split; the photographs differ
            save_jpg(
                grad_dir / "1. Original Images" / SPLITS[split] / f"{stem}.jpg", fundus(seed=100 * (s_idx + 1) + k)
            )
            rows.append([stem, g, min(g, 2), "", ""])
        df = pd.DataFrame(rows, columns=["Image name", "Retinopathy grade", "Risk of macular edema ", "", " "])
        path = grad_dir / "2. Groundtruths" / CSV[split]
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(path, index=False)
    return root
