"""Build a tiny copy of the generic "bring your own data" layout: nested folders, mixed suffixes,
partial labels (grade, referable-only, none), patients, an official test split, partial masks."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..common import SIZE, fundus, save_jpg, save_mask, square_mask

#: (relative path, grade, referable, patient, split, masks?)
ROWS = [
    ("site1/a/001.jpg", 0, "", "p1", "train", True),
    ("site1/a/002.jpg", 2, "", "p1", "train", True),
    ("site1/b/003.png", 3, "", "p2", "train", False),
    ("site1/b/004.JPG", "", 1, "p2", "train", False),
    ("site2/005.tif", 4, "", "p3", "train", True),
    ("site2/006.jpeg", 1, "", "p3", "train", False),
    ("site2/007.jpg", 0, "", "p4", "test", True),
    ("site2/008.jpg", 2, "", "p4", "test", False),
    ("site2/009.jpg", 0, "", "p5", "train", False),
    ("site2/010.jpg", 2, "", "p5", "train", False),
]
UNLISTED = ["extra/011.jpg", "extra/012.png"]  # photographs labels.csv does not mention: unlabelled


def make_folder(root: Path) -> Path:
    for i, (rel, *_rest) in enumerate(ROWS + [(u,) for u in UNLISTED]):
        path = root / rel
        img = fundus(seed=100 + i)
        if path.suffix.lower() in (".png", ".tif"):
            path.parent.mkdir(parents=True, exist_ok=True)
            from PIL import Image

            Image.fromarray(img).save(path)
        else:
            save_jpg(path, img)
    for rel, *_, masked in ROWS:
        if masked:
            stem = Path(rel).stem
            save_mask(root / "masks" / "EX" / f"{stem}.png", square_mask(SIZE, 30, 45), "grey")
            save_mask(
                root / "masks" / "MA" / f"{stem}.png",
                square_mask(SIZE, 20, 30, 1) if stem != "007" else square_mask(SIZE, 0, 0, -1),
                "binary",
            )
    df = pd.DataFrame(
        [
            {"image": rel if i % 2 == 0 else Path(rel).name, "grade": g, "referable": r, "patient": p, "split": s}
            for i, (rel, g, r, p, s, _) in enumerate(ROWS)
        ]
    )
    df.to_csv(root / "labels.csv", index=False)
    return root
