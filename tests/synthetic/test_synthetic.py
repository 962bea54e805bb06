"""The synthetic fundus generator: determinism, exact masks, every layout readable, atomic output."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from retinalab.datasets import read_dataset
from retinalab.preprocessing import PatchCache, PatchCacheConfig, PatchGrid
from retinalab.synthetic import synth_fundus, write_synthetic


def digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_lesions_follow_the_grade_and_masks_are_exact():
    healthy = synth_fundus(np.random.default_rng(0), (256, 170), grade=0)
    assert not any(healthy.masks[k].any() for k in ("MA", "HE", "EX", "SE")) and healthy.masks["OD"].any()
    sick = synth_fundus(np.random.default_rng(0), (256, 170), grade=4, lesion_scale=2)
    assert all(sick.masks[k].any() for k in ("MA", "HE", "EX"))
    img = sick.image.astype(int)
    # exudates are bright yellow, haemorrhages dark red: the mask pixels really look like that
    ex, he = sick.masks["EX"] & ~sick.masks["HE"], sick.masks["HE"] & ~sick.masks["EX"]
    assert img[ex][:, 1].mean() > img[~ex & sick.masks["OD"].__invert__()][:, 1].mean() + 60
    assert img[he][:, 0].mean() < 150
    # outside the field of view everything is black
    assert sick.image[0, 0].max() == 0 and sick.image[-1, -1].max() == 0
    faint = synth_fundus(np.random.default_rng(0), (256, 170), grade=4, lesion_scale=2, lesion_contrast=0.0)
    assert (faint.masks["EX"] == sick.masks["EX"]).all()


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    a = write_synthetic("idrid", tmp_path / "a", num_images=6, seed=5, size=(96, 64), workers=1)
    b = write_synthetic("idrid", tmp_path / "b", num_images=6, seed=5, size=(96, 64), workers=2)
    c = write_synthetic("idrid", tmp_path / "c", num_images=6, seed=6, size=(96, 64), workers=1)
    assert digest(a) == digest(b) != digest(c)


@pytest.mark.parametrize("dataset,expected", [("idrid", 9), ("eophtha", 9), ("eyepacs", 9), ("messidor", 9)])
def test_every_layout_reads_back(tmp_path, dataset, expected):
    root = write_synthetic(dataset, tmp_path / dataset, num_images=9, seed=0, size=(96, 64))
    recs = read_dataset(dataset, root)
    assert len(recs) == expected
    if dataset == "eophtha":
        assert any(r.masks.get("EX") for r in recs) and any(r.masks.get("MA") for r in recs)
        assert all(r.patient_id for r in recs)
    if dataset in ("eyepacs", "messidor"):
        assert {r.grade for r in recs} >= {0, 1, 2, 3}
    if dataset == "idrid":
        assert any(r.has_lesion_masks for r in recs) and any(r.grade == 0 for r in recs)


def test_synthetic_idrid_patch_labels_match_drawn_lesions(tmp_path):
    """Each patch label is 1 exactly where the written lesion masks (MA, HE, EX, SE; not the optic disc)
    have a pixel inside the patch: computed here from the mask files with a loop over the 8x8 grid
    (no FOV crop, so the 256x170 image is resized to 128x128 and a patch covers a 32 x 21.25 px region,
    a boundary pixel counting for both sides)."""
    from PIL import Image

    root = write_synthetic("idrid", tmp_path / "s", num_images=6, seed=1, size=(256, 170), lesion_scale=2)
    recs = read_dataset("idrid", root, subsets=["segmentation"])
    cache = PatchCache.build(
        recs,
        tmp_path / "cache",
        PatchCacheConfig(grid=PatchGrid(128, 16, 16, 8), thumb_size=32, crop_fov=False),
        progress=False,
    )
    assert (cache.image_labels == 1).all() and len(cache.images) == len(recs) == 2
    by_id = {r.image_id: r for r in recs}
    for i, meta in enumerate(cache.images):
        masks = [
            np.asarray(Image.open(p).convert("L")) > 0
            for name, p in by_id[meta["image_id"]].masks.items()
            if name != "OD" and p
        ]
        union = np.logical_or.reduce(masks)
        h, w = union.shape
        expected = np.zeros((8, 8), np.int8)
        for r in range(8):
            for c in range(8):
                rows = slice(int(np.floor(16 * r * h / 128)), int(np.ceil(16 * (r + 1) * h / 128)))
                cols = slice(int(np.floor(16 * c * w / 128)), int(np.ceil(16 * (c + 1) * w / 128)))
                expected[r, c] = union[rows, cols].any()
        assert 0 < expected.sum() < 64, meta["image_id"]
        np.testing.assert_array_equal(np.asarray(cache.labels[i]).reshape(8, 8), expected, err_msg=meta["image_id"])


def test_output_is_atomic_and_never_clobbers(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty"):
        write_synthetic("eyepacs", out, num_images=4, size=(64, 64))
    assert (out / "keep.txt").read_text() == "user data"
    with pytest.raises(ValueError, match="grade must be 0-4"):
        synth_fundus(np.random.default_rng(0), (64, 64), grade=7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no partial folder left behind


def test_benchmark_preset_offers_no_brightness_or_position_shortcut():
    """The audit behind the preset: on ``classic`` no lesion reaches the outer ring of the field of
    view (23% of its area, and its darkest part); on ``benchmark`` lesions are spread over the retina
    and brightness, of a photograph or of a patch within it, says nothing about lesions. Sized for
    speed (60 small photographs); docs/synthetic.md has the 200-photograph figures."""
    from retinalab.synthetic.audit import shortcut_audit

    classic = shortcut_audit("classic", num_images=60, size=(512, 340))
    bench = shortcut_audit("benchmark", num_images=60, size=(512, 340))
    assert classic["lesion_share_outside_088"] < 0.05 < 0.12 < bench["lesion_share_outside_088"] < 0.35
    assert abs(bench["patch_brightness_auroc"] - 0.5) < 0.05
    assert abs(bench["image_brightness_auroc"] - 0.5) < 0.15  # 30 against 30 photographs: a noisy figure
    # grade-1 photographs show their microaneurysms on the patch scale, about 3 px across (classic: 2)
    assert bench["grade1_visible"] == 1.0 and bench["ma_diameter_px"] > 2.5 > classic["ma_diameter_px"]


def test_presets_are_named_recorded_and_classic_is_the_default(tmp_path):
    from retinalab.cli import main
    from retinalab.synthetic import PRESETS, read_settings

    assert (
        main(
            [
                "synth",
                "idrid",
                "--out",
                str(tmp_path / "b"),
                "--num-images",
                "9",
                "--size",
                "96x64",
                "--workers",
                "1",
                "--preset",
                "benchmark",
                "--lesion-contrast",
                "0.5",
            ]
        )
        == 0
    )
    settings = read_settings(tmp_path / "b")
    assert settings["preset"]["name"] == "benchmark" and settings["preset"]["placement"] == "fov"
    assert settings["lesion_contrast"] == 0.5 and settings["num_images"] == 9
    assert read_dataset("idrid", tmp_path / "b")  # the readers ignore synthetic.json
    # the same seed with another preset draws other photographs; classic is the default
    a = write_synthetic("idrid", tmp_path / "c1", num_images=4, seed=2, size=(96, 64))
    b = write_synthetic("idrid", tmp_path / "c2", num_images=4, seed=2, size=(96, 64), preset="classic")
    e = write_synthetic("idrid", tmp_path / "e", num_images=4, seed=2, size=(96, 64), preset="easy")
    assert digest(a) == digest(b) != digest(e) and read_settings(a)["preset"] == read_settings(b)["preset"]
    assert set(PRESETS) == {"classic", "benchmark", "collaborative", "easy", "scarce"}
    with pytest.raises(ValueError, match="unknown synthetic preset 'hard'.*benchmark"):
        synth_fundus(np.random.default_rng(0), (64, 64), preset="hard")


def test_collaborative_preset_has_idrids_proportions_and_one_grade_mix(tmp_path):
    """Paper 001's benchmark data: 600 photographs split as IDRiD is (54 + 27 pixel-annotated, 415 +
    104 graded: >= 100 graded test photographs), and the pixel-annotated photographs drawn from the
    graded photographs' grade mix, so that D cannot tell the two apart by how diseased they are
    (``benchmark`` draws them all diseased: the check below tells the two presets apart)."""
    from retinalab.datasets.idrid import GRADING_CSV
    from retinalab.synthetic.layouts import idrid_plan

    plan = idrid_plan(600, "collaborative", 1234)
    assert {k: len(v) for k, v in plan.items()} == {
        "segmentation/train": 54,
        "segmentation/test": 27,
        "grading/train": 415,
        "grading/test": 104,
    }

    def shares(grades):
        return np.bincount(grades, minlength=5) / len(grades)

    for preset, same in (("collaborative", True), ("benchmark", False)):
        big = idrid_plan(4000, preset, 7)
        seg = shares(big["segmentation/train"] + big["segmentation/test"])
        graded = shares(big["grading/train"] + big["grading/test"])
        assert (np.abs(seg - graded).max() < 0.05) == same, (preset, seg, graded)
    # the written layout follows the plan: grades in the CSVs, lesion masks exactly on the diseased photographs
    root = write_synthetic(
        "idrid", tmp_path / "c", num_images=40, seed=3, size=(128, 85), workers=1, preset="collaborative"
    )
    plan = idrid_plan(40, "collaborative", 3)
    import pandas as pd

    for split in ("train", "test"):
        csv = pd.read_csv(root / "B. Disease Grading" / "2. Groundtruths" / GRADING_CSV[split])
        assert csv["Retinopathy grade"].tolist() == plan[f"grading/{split}"]
    recs = read_dataset("idrid", root, subsets=["segmentation"])
    with_masks = [
        any(r.masks.get(les) is not None for les in ("MA", "HE", "EX", "SE"))
        for r in sorted(recs, key=lambda r: (r.split != "train", r.image_id))
    ]
    assert with_masks == [g > 0 for g in plan["segmentation/train"] + plan["segmentation/test"]]
    assert 0 in plan["segmentation/train"] + plan["segmentation/test"]


def test_scarce_preset_keeps_the_benchmarks_shortcut_checks():
    """``scarce`` adds variety, not shortcuts: the same audit and bounds as ``benchmark`` above
    (docs/synthetic.md has the 200-photograph figures)."""
    from retinalab.synthetic.audit import shortcut_audit

    scarce = shortcut_audit("scarce", num_images=60, size=(512, 340))
    assert 0.12 < scarce["lesion_share_outside_088"] < 0.35
    assert abs(scarce["patch_brightness_auroc"] - 0.5) < 0.05
    assert abs(scarce["image_brightness_auroc"] - 0.5) < 0.15
    assert scarce["grade1_visible"] == 1.0 and scarce["ma_diameter_px"] > 2.5


def test_scarce_preset_draws_looks_lookalikes_and_backgrounds_per_photograph():
    """What makes 10 labelled photographs scarce: each lesion type takes one of several looks per
    photograph, look-alikes that are never in a mask appear whatever the grade (the same seed draws
    the same ones for a healthy and a diseased photograph), and the fundus colour and the field of
    view's shape vary from photograph to photograph far more than under ``benchmark``."""
    from retinalab.synthetic.variety import FAMILIES

    seen = {k: set() for k in FAMILIES}
    colours = {"benchmark": [], "scarce": []}
    cut = 0
    for i in range(24):
        sick = synth_fundus(np.random.default_rng(i), (256, 170), grade=4, preset="scarce")
        healthy = synth_fundus(np.random.default_rng(i), (256, 170), grade=0, preset="scarce")
        for kind, name in sick.families.items():
            seen[kind].add(name)
        assert healthy.distractors == sick.distractors  # drawn before, and independently of, the lesions
        assert not any(healthy.masks[k].any() for k in ("MA", "HE", "EX", "SE"))
        fov = healthy.image.max(2) > 0
        rows = np.flatnonzero(fov.any(1))
        cut += int(fov[rows[0]].sum() > 40)  # a flat top edge, not the tip of a circle
        for preset in colours:
            f = synth_fundus(np.random.default_rng(100 + i), (128, 85), grade=0, preset=preset)
            colours[preset].append(f.image[f.image.max(2) > 0].mean(0))
    assert all(len(seen[k]) >= min(3, len(FAMILIES[k])) for k in FAMILIES), seen
    assert synth_fundus(np.random.default_rng(0), (128, 85), grade=2, preset="benchmark").families is None
    total = {
        k: sum(
            synth_fundus(np.random.default_rng(i), (128, 85), grade=0, preset="scarce").distractors[k]
            for i in range(24)
        )
        for k in ("drusen", "reflex", "crossing", "pigment")
    }
    assert all(v > 0 for v in total.values()), total
    assert 4 <= cut <= 20
    # pigmentation and colour cast: brightness and hue (green over red) of the fundus vary more
    brightness = {p: float(np.std(np.array(c).mean(1))) for p, c in colours.items()}
    hue = {p: float(np.std(np.array(c)[:, 1] / np.array(c)[:, 0])) for p, c in colours.items()}
    assert brightness["scarce"] > 1.4 * brightness["benchmark"] and hue["scarce"] > 1.4 * hue["benchmark"], (
        brightness,
        hue,
    )


@pytest.mark.parametrize("dataset", ["idrid", "eophtha", "eyepacs", "messidor", "folder"])
def test_the_truth_of_image_level_photographs_is_kept_where_no_reader_looks(tmp_path, dataset):
    """Issue 31: the drawn lesion masks of the photographs a layout labels per image only are written
    under <root>/_truth (named in synthetic.json); readers return exactly what they return without it."""
    from PIL import Image

    from retinalab.check import check_dataset
    from retinalab.synthetic import TRUTH_DIR, read_settings, truth_masks

    root = write_synthetic(dataset, tmp_path / dataset, num_images=12, seed=1, size=(96, 64))
    assert read_settings(root)["truth"]["folder"] == TRUTH_DIR
    recs = read_dataset(dataset, root)
    seen = {str(p) for r in recs for p in [r.image_path, *r.masks.values()]}
    assert not any(f"/{TRUTH_DIR}/" in p for p in seen)  # no reader sees the truth
    image_level = [r for r in recs if not r.masks or not any(r.masks.values())]
    assert image_level
    with_truth = [r for r in image_level if truth_masks(root, r.image_path)]
    assert with_truth  # lesions drawn on some of them, and kept
    for r in recs:
        if r.masks and any(r.masks.values()):
            assert not truth_masks(root, r.image_path)  # published masks: nothing hidden beside them
    r = with_truth[0]
    shutil.move(str(root / TRUTH_DIR), str(tmp_path / "kept"))
    assert read_dataset(dataset, root) == recs  # with or without the folder, the same records
    shutil.move(str(tmp_path / "kept"), str(root / TRUTH_DIR))
    for name, path in truth_masks(root, r.image_path).items():
        m = np.asarray(Image.open(path)) > 0
        assert m.any() and m.shape == (64, 96) and name in ("MA", "HE", "EX", "SE", "OD")
    if dataset == "idrid":  # the truth follows the grade: no lesion on grade 0, some on grades >= 2
        lesions = {r.image_id: set(truth_masks(root, r.image_path)) - {"OD"} for r in image_level}
        assert all(not lesions[r.image_id] for r in image_level if r.grade == 0)
        assert all(lesions[r.image_id] for r in image_level if r.grade is not None and r.grade >= 2)
    report = check_dataset(dataset, root, progress=False)
    assert report.ok and report.images == len(recs), report.problems
