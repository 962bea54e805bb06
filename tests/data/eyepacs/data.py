"""Build a tiny copy of the EyePACS/Kaggle layout: trainLabels.csv + train/, solution CSV + test/."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..common import fundus, save_jpg

TRAIN = {
    "10_left": 0,
    "10_right": 0,
    "13_left": 2,
    "13_right": 3,
    "15_left": 1,
    "15_right": 0,
    "16_left": 4,
    "16_right": 4,
}
TEST = {"1_left": 0, "1_right": 1, "2_left": 2, "2_right": 2}


def make_eyepacs(root: Path, test: bool = True) -> Path:
    for i, name in enumerate(TRAIN):
        save_jpg(root / "train" / f"{name}.jpeg", fundus(seed=i))
    pd.DataFrame({"image": list(TRAIN), "level": list(TRAIN.values())}).to_csv(root / "trainLabels.csv", index=False)
    if test:
        for i, name in enumerate(TEST):
            save_jpg(root / "test" / f"{name}.jpeg", fundus(seed=50 + i))
        pd.DataFrame(
            {"image": list(TEST), "level": list(TEST.values()), "Usage": ["Public", "Private", "Private", "Public"]}
        ).to_csv(root / "retinopathy_solution.csv", index=False)
    return root
