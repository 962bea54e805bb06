"""Build a tiny copy of Messidor: BaseNN folders of .tif images with Annotation_BaseNN.xls (sheet Feuil1)."""

from __future__ import annotations

from pathlib import Path

import xlwt
from PIL import Image

from ..common import fundus

COLUMNS = ["Image name", "Ophthalmologic department", "Retinopathy grade", "Risk of macular edema "]


def write_xls(path: Path, rows: list[list]) -> None:
    wb = xlwt.Workbook()
    ws = wb.add_sheet("Feuil1")
    for j, c in enumerate(COLUMNS):
        ws.write(0, j, c)
    for i, row in enumerate(rows, start=1):
        for j, v in enumerate(row):
            ws.write(i, j, v)
    wb.save(str(path))


def make_messidor(root: Path, bases: dict[str, list[int]] | None = None, csv_base: str | None = None) -> Path:
    """``bases`` maps BaseNN -> grades of its images; ``csv_base`` gets a .csv export instead of .xls."""
    bases = bases or {"Base11": [0, 1, 3], "Base12": [2, 0]}
    n = 0
    for base, grades in bases.items():
        (root / base).mkdir(parents=True, exist_ok=True)
        rows = []
        for g in grades:
            n += 1
            name = f"20051019_{38557 + n}_0100_PP.tif"
            Image.fromarray(fundus(seed=n)).save(root / base / name)
            rows.append([name, "Service Ophtalmologie Lariboisiere", g, 0])
        if base == csv_base:
            import pandas as pd

            pd.DataFrame(rows, columns=COLUMNS).to_csv(root / base / f"Annotation_{base}.csv", index=False)
        else:
            write_xls(root / base / f"Annotation_{base}.xls", rows)
    return root
