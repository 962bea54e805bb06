"""`retinalab check-data`: a clean set passes; each planted problem is found and named."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from retinalab.check import check_dataset
from retinalab.cli import main


def kinds(report) -> set[str]:
    return {f.kind for f in report.problems}


def test_clean_folder_passes_with_counts_warnings_and_a_contact_sheet(folder_root, tmp_path, capsys):
    assert (
        main(
            [
                "check-data",
                "--dataset",
                "folder",
                "--root",
                str(folder_root),
                "--out",
                str(tmp_path / "out"),
                "--workers",
                "1",
                "--sample",
                "5",
                "--thumb",
                "64",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "OK: no problems found" in text and "12 photographs" in text
    report = json.loads((tmp_path / "out" / "check.json").read_text())
    assert report["ok"] and report["counts"]["split"] == {"none": 2, "test": 2, "train": 8}
    assert report["counts"]["lesions"]["MA"] == "4 annotated / 3 with lesion pixels"
    assert [w["kind"] for w in report["warnings"]] == ["mask_empty"] and "007.png" in report["warnings"][0]["file"]
    sheet = Image.open(tmp_path / "out" / "contact_sheet.png")
    assert sheet.format == "PNG" and sheet.size == (3 * 64, 2 * 64)  # 5 tiles: 3 columns x 2 rows


def test_undecodable_photograph(folder_root):
    (folder_root / "site2" / "006.jpeg").write_bytes(b"\xff\xd8 truncated")
    r = check_dataset("folder", folder_root, workers=0, progress=False)
    assert kinds(r) == {"undecodable"} and "006.jpeg" in r.problems[0].file


def test_photograph_without_field_of_view(folder_root):
    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(folder_root / "site2" / "009.jpg")
    r = check_dataset("folder", folder_root, workers=0, progress=False)
    assert kinds(r) == {"no_field_of_view"} and "009.jpg" in r.problems[0].message


def test_mask_of_the_wrong_size(folder_root):
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(folder_root / "masks" / "EX" / "001.png")
    r = check_dataset("folder", folder_root, workers=0, progress=False)
    assert kinds(r) == {"mask_size"} and "10x10" in r.problems[0].message


def test_duplicate_photographs_across_splits(folder_root):
    shutil.copy(folder_root / "site1" / "a" / "001.jpg", folder_root / "site2" / "008.jpg")  # 008 is in the test split
    r = check_dataset("folder", folder_root, workers=0, progress=False)
    assert kinds(r) == {"duplicate_across_splits"} and "008.jpg" in r.problems[0].message


def test_a_large_duplicate_group_prints_a_few_names_and_keeps_all_in_check_json(folder_root, tmp_path, capsys):
    """Many copies of one photograph (the folder layout takes every image under root): the printed
    report names three and counts the rest; check.json lists every path."""
    src = folder_root / "site1" / "a" / "001.jpg"
    for i in range(40):
        shutil.copy(src, folder_root / "site2" / f"copy{i:02d}.jpg")
    main(
        [
            "check-data",
            "--dataset",
            "folder",
            "--root",
            str(folder_root),
            "--out",
            str(tmp_path / "out"),
            "--workers",
            "1",
        ]
    )
    text = capsys.readouterr().out
    line = next(x for x in text.splitlines() if "identical photographs" in x)
    assert "41 identical photographs" in line and "and 38 more (all in check.json)" in line and len(line) < 400
    report = json.loads((tmp_path / "out" / "check.json").read_text())
    group = next(f for f in report["problems"] + report["warnings"] if f["kind"].startswith("duplicate"))
    assert len(group["files"]) == 41 and str(src) in group["files"]


def test_the_printed_report_shows_three_examples_per_kind():
    from retinalab.check import Finding, Report

    r = Report(
        "folder",
        "/data",
        10,
        problems=[Finding("undecodable", f"{i}.jpg", f"{i}.jpg: broken") for i in range(7)]
        + [Finding("mask_size", "m.png", "m.png: 10x10")],
    )
    lines = r.text().splitlines()
    assert sum("[undecodable]" in x for x in lines) == 4 and "  [undecodable] ... 4 more in check.json" in lines
    assert "  [mask_size] m.png: 10x10" in lines


def test_patient_in_two_splits(folder_root):
    df = pd.read_csv(folder_root / "labels.csv", dtype=str).fillna("")
    df.loc[1, "split"] = "test"  # p1's second photograph
    df.to_csv(folder_root / "labels.csv", index=False)
    r = check_dataset("folder", folder_root, workers=0, progress=False)
    assert kinds(r) == {"patient_in_two_splits"} and "'p1'" in r.problems[0].message


def test_unreadable_label_rows(folder_root, capsys):
    df = pd.read_csv(folder_root / "labels.csv", dtype=str).fillna("")
    df.loc[0, "image"] = "gone.jpg"
    df.loc[2, "grade"] = "severe"
    df.to_csv(folder_root / "labels.csv", index=False)
    r = check_dataset("folder", folder_root, workers=0, progress=False)
    assert kinds(r) == {"label_row"} and len(r.problems) == 2
    assert any("gone.jpg" in f.message for f in r.problems) and any("'severe'" in f.message for f in r.problems)
    assert (
        main(
            [
                "check-data",
                "--dataset",
                "folder",
                "--root",
                str(folder_root),
                "--workers",
                "1",
                "--out",
                str(folder_root.parent / "o"),
            ]
        )
        == 1
    )
    assert "FAILED: 2 problem(s)" in capsys.readouterr().out


@pytest.mark.parametrize("fixture", ["idrid_root", "eophtha_root", "eyepacs_root", "messidor_root"])
def test_public_layouts_check_clean(fixture, request, tmp_path):
    root = request.getfixturevalue(fixture)
    dataset = fixture.removesuffix("_root")
    r = check_dataset(dataset, root, out_dir=tmp_path, workers=0, progress=False)
    assert r.ok, r.text()
    assert r.images > 0 and (tmp_path / "contact_sheet.png").is_file()


def test_missing_dataset_exits_2(tmp_path, capsys):
    assert main(["check-data", "--dataset", "eyepacs", "--root", str(tmp_path / "none")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_undecodable_mask(folder_root):
    (folder_root / "masks" / "MA" / "002.png").write_bytes(b"\x89PNG broken")
    r = check_dataset("folder", folder_root, workers=0, progress=False)
    assert kinds(r) == {"mask_undecodable"} and "002.png" in r.problems[0].file
