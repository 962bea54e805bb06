"""Readers on tiny fake copies of each published layout, and every kind of bad label input."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from retinalab.datasets import (
    DataFormatError,
    DatasetNotFoundError,
    read_dataset,
    read_eophtha,
    read_eyepacs,
    read_idrid,
    read_messidor,
)
from tests.data.idrid.data import CSV, GRAD, make_idrid
from tests.data.messidor.data import make_messidor, write_xls


# ------------------------------------------------------------------ IDRiD
def test_idrid_reads_both_parts(idrid_root):
    recs = read_idrid(idrid_root)
    seg = [r for r in recs if r.meta["subset"] == "segmentation"]
    grad = [r for r in recs if r.meta["subset"] == "grading"]
    assert len(seg) == 5 and len(grad) == 6
    assert [r.split for r in seg].count("train") == 3
    # grading names restart per split: ids carry the split and stay unique
    ids = {r.image_id for r in grad}
    assert "grading/train/IDRiD_001" in ids and "grading/test/IDRiD_001" in ids
    by_id = {r.image_id: r for r in recs}
    assert by_id["grading/train/IDRiD_004"].grade == 4
    assert by_id["grading/train/IDRiD_002"].dme_risk == 2
    # a missing soft-exudate mask is "annotated, empty"; a present one is a path
    assert by_id["seg/train/IDRiD_02"].masks["SE"] is None
    assert by_id["seg/train/IDRiD_01"].masks["SE"].name == "IDRiD_01_SE.tif"
    assert set(by_id["seg/train/IDRiD_01"].masks) == {"MA", "HE", "EX", "SE", "OD"}
    assert all(r.masks == {} for r in grad)


def test_idrid_root_one_level_above_and_nested_duplicates(tmp_path):
    make_idrid(tmp_path / "downloads" / "IDRiD", nested=True)
    recs = read_idrid(tmp_path / "downloads")  # root one level above, parts nested twice
    assert len(recs) == 11
    assert read_dataset("idrid", tmp_path / "downloads" / "IDRiD", subsets=["segmentation"])[0].image_id.startswith(
        "seg/"
    )


def test_idrid_missing_part_names_the_folder(tmp_path):
    make_idrid(tmp_path / "IDRiD")
    shutil.rmtree(tmp_path / "IDRiD" / GRAD)
    assert len(read_idrid(tmp_path / "IDRiD", subsets=["segmentation"])) == 5
    with pytest.raises(DatasetNotFoundError, match="B. Disease Grading"):
        read_idrid(tmp_path / "IDRiD", subsets=["grading"])
    with pytest.raises(DatasetNotFoundError, match="not a folder"):
        read_idrid(tmp_path / "nowhere")


def test_idrid_missing_label_file(idrid_root):
    (idrid_root / GRAD / "2. Groundtruths" / CSV["test"]).unlink()
    with pytest.raises(DatasetNotFoundError, match="Testing Labels.csv"):
        read_idrid(idrid_root, subsets=["grading"])


def test_idrid_csv_with_wrong_columns(idrid_root):
    csv = idrid_root / GRAD / "2. Groundtruths" / CSV["train"]
    pd.DataFrame({"Image": ["IDRiD_001"], "Grade": [0]}).to_csv(csv, index=False)
    with pytest.raises(DataFormatError, match=r"Training Labels.csv lacks column\(s\) \['Image name'"):
        read_idrid(idrid_root, subsets=["grading"])


def test_idrid_row_without_image_raises_or_skips(idrid_root, caplog):
    csv = idrid_root / GRAD / "2. Groundtruths" / CSV["train"]
    df = pd.read_csv(csv)
    df.loc[len(df)] = ["IDRiD_999", 2, 0, None, None]
    df.to_csv(csv, index=False)
    with pytest.raises(DataFormatError, match="IDRiD_999"):
        read_idrid(idrid_root, subsets=["grading"])
    recs = read_idrid(idrid_root, subsets=["grading"], on_error="skip")
    assert len(recs) == 6
    assert "1 item(s) skipped" in caplog.text


def test_idrid_name_escaping_root(idrid_root):
    csv = idrid_root / GRAD / "2. Groundtruths" / CSV["test"]
    df = pd.read_csv(csv)
    df.loc[0, "Image name"] = "../../secret"
    df.to_csv(csv, index=False)
    with pytest.raises(DataFormatError, match="escapes the dataset root"):
        read_idrid(idrid_root, subsets=["grading"])


def test_idrid_non_integer_grade(idrid_root):
    csv = idrid_root / GRAD / "2. Groundtruths" / CSV["test"]
    df = pd.read_csv(csv)
    df["Retinopathy grade"] = df["Retinopathy grade"].astype(object)
    df.loc[1, "Retinopathy grade"] = "severe"
    df.to_csv(csv, index=False)
    with pytest.raises(DataFormatError, match=r"row 3, column 'Retinopathy grade'"):
        read_idrid(idrid_root, subsets=["grading"])


# ------------------------------------------------------------------ e-ophtha
def test_eophtha_patients_masks_and_quirks(eophtha_root):
    recs = read_eophtha(eophtha_root)
    assert len(recs) == 9  # 5 EX-part + 4 MA-part images; Thumbs.db ignored, .JPG included
    assert any(r.image_path.suffix == ".JPG" for r in recs)
    by_id = {r.image_id: r for r in recs}
    ex = by_id["EX/E0000404/C0001885"]
    assert ex.patient_id == "E0000404" and ex.masks["EX"].name == "C0001885_EX.png"
    assert by_id["MA/E0000601/C0003002"].masks["MA"].name == "C0003002.png"
    assert by_id["EX/E0000500/C0002000"].masks == {"EX": None}  # healthy: annotated, empty
    assert {r.group for r in recs} == {r.patient_id for r in recs}
    assert len(read_eophtha(eophtha_root, parts=["MA"])) == 4


def test_eophtha_lesion_image_without_annotation(eophtha_root):
    (eophtha_root / "e_optha_EX" / "Annotation_EX" / "E0000405" / "DS000CMK_EX.png").unlink()
    with pytest.raises(DataFormatError, match="DS000CMK"):
        read_eophtha(eophtha_root)
    assert len(read_eophtha(eophtha_root, on_error="skip")) == 8


def test_eophtha_missing(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DatasetNotFoundError, match="e_optha_EX"):
        read_eophtha(tmp_path / "x")


# ------------------------------------------------------------------ EyePACS
def test_eyepacs_train_and_test(eyepacs_root):
    recs = read_eyepacs(eyepacs_root)
    assert len(recs) == 12
    by_id = {r.image_id: r for r in recs}
    assert by_id["train/13_right"].grade == 3 and by_id["train/13_right"].patient_id == "13"
    assert by_id["test/1_right"].meta["Usage"] == "Private" and by_id["test/1_right"].split == "test"
    assert len(read_eyepacs(eyepacs_root, include_test=False)) == 8


def test_eyepacs_missing_image_and_bad_columns(eyepacs_root):
    (eyepacs_root / "train" / "16_left.jpeg").unlink()
    with pytest.raises(DataFormatError, match="16_left"):
        read_eyepacs(eyepacs_root)
    assert len(read_eyepacs(eyepacs_root, on_error="skip")) == 11
    pd.DataFrame({"name": ["10_left"], "grade": [0]}).to_csv(eyepacs_root / "trainLabels.csv", index=False)
    with pytest.raises(DataFormatError, match=r"trainLabels.csv lacks column\(s\) \['image', 'level'\]"):
        read_eyepacs(eyepacs_root)


def test_eyepacs_duplicated_ids(eyepacs_root):
    df = pd.read_csv(eyepacs_root / "trainLabels.csv")
    pd.concat([df, df.iloc[:1]]).to_csv(eyepacs_root / "trainLabels.csv", index=False)
    with pytest.raises(DataFormatError, match="duplicated image id 'train/10_left'"):
        read_eyepacs(eyepacs_root)


# ------------------------------------------------------------------ Messidor
def test_messidor_xls_and_csv(tmp_path):
    root = make_messidor(tmp_path / "m", csv_base="Base12")
    recs = read_messidor(root)
    assert len(recs) == 5
    assert sorted(r.grade for r in recs) == [0, 0, 1, 2, 3]
    assert {r.meta["base"] for r in recs} == {"Base11", "Base12"}
    assert all(r.patient_id is None and r.image_path.suffix == ".tif" for r in recs)


def test_messidor_updated_workbook_wins(messidor_root):
    rows = [[p.name, "x", 3, 1] for p in sorted((messidor_root / "Base11").glob("*.tif"))]
    write_xls(messidor_root / "Base11" / "Annotation_Base11_update20161024.xls", rows)
    recs = [r for r in read_messidor(messidor_root) if r.meta["base"] == "Base11"]
    assert [r.grade for r in recs] == [3, 3, 3]


def test_messidor_missing_annotation_and_image(messidor_root):
    (messidor_root / "Base12" / "Annotation_Base12.xls").unlink()
    with pytest.raises(DatasetNotFoundError, match="Annotation_Base12"):
        read_messidor(messidor_root)
    shutil.rmtree(messidor_root / "Base12")
    next((messidor_root / "Base11").glob("*.tif")).unlink()
    with pytest.raises(DataFormatError, match="does not exist"):
        read_messidor(messidor_root)


def test_unknown_dataset_lists_options(tmp_path):
    with pytest.raises(ValueError, match="choose one of"):
        read_dataset("kaggle", tmp_path)
