"""Write synthetic fundus photographs in the exact published layout of each dataset.

Every reader in :mod:`retinalab.datasets` runs unchanged on these folders. Output is deterministic
for a seed: image ``i`` is drawn from ``SeedSequence([seed, i])`` whatever the number of workers.
The whole dataset is written into a temporary sibling folder and renamed into place at the end,
so an interrupted run never leaves a half-written dataset behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ..datasets import eophtha as eo
from ..datasets import idrid
from ..datasets.truth import SETTINGS_FILE, TRUTH_DIR
from ..utils.errors import ConfigError, OutputExistsError
from .drawing import Job, Options, run_jobs, sample_grades
from .presets import IDRID_GRADE_MIX, SynthPreset, get_preset

log = logging.getLogger(__name__)

SynthDataset = Literal["idrid", "eophtha", "eyepacs", "messidor", "folder"]


# ------------------------------------------------------------------ layouts
def idrid_plan(n: int, preset: str | SynthPreset, seed: int) -> dict[str, list[int]]:
    """The DR grade of every photograph a synthetic IDRiD layout of ``n`` photographs draws, by part:
    ``segmentation/train``, ``segmentation/test`` (pixel-annotated: ``preset.idrid_seg_fraction`` of
    ``n``, two thirds for training as in IDRiD's 54 + 27) and ``grading/train``, ``grading/test`` (the
    rest, 80% for training as in IDRiD's 413 + 103)."""
    style = get_preset(preset)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 10**6]))
    n_seg = max(2, round(n * style.idrid_seg_fraction))
    n_grad = max(2, n - n_seg)
    seg_train = max(1, round(n_seg * 2 / 3))
    grad_train = max(1, round(n_grad * 0.8))
    seg = sample_grades(rng, n_seg, list(style.idrid_seg_grades or IDRID_GRADE_MIX))
    grad = sample_grades(rng, n_grad, list(IDRID_GRADE_MIX), minimum=(0, 0, 2, 3))
    return {
        "segmentation/train": seg[:seg_train],
        "segmentation/test": seg[seg_train:],
        "grading/train": grad[:grad_train],
        "grading/test": grad[grad_train:],
    }


def _idrid(out: Path, n: int, opt: Options, workers: int) -> None:
    plan = idrid_plan(n, opt.preset, opt.seed)
    jobs: list[Job] = []
    seg = out / idrid.SEG
    for split in ("train", "test"):
        for grade in plan[f"segmentation/{split}"]:
            stem = f"IDRiD_{len(jobs) + 1:02d}"
            gt = seg / "2. All Segmentation Groundtruths" / idrid.SPLITS[split]
            jobs.append(
                Job(
                    len(jobs),
                    grade,
                    seg / "1. Original Images" / idrid.SPLITS[split] / f"{stem}.jpg",
                    {les: gt / folder / f"{stem}_{les}.tif" for les, folder in idrid.MASK_FOLDERS.items()},
                )
            )
    grading = out / idrid.GRADING
    grad_jobs = []
    for split in ("train", "test"):
        for num, grade in enumerate(plan[f"grading/{split}"], 1):  # names restart per split
            path = grading / "1. Original Images" / idrid.SPLITS[split] / f"IDRiD_{num:03d}.jpg"
            grad_jobs.append((split, path.stem, len(jobs)))
            jobs.append(Job(len(jobs), grade, path, {}))
    # placeholder folders that exist in the real layout even when a split has no soft exudates
    for split in idrid.SPLITS.values():
        for folder in idrid.MASK_FOLDERS.values():
            (seg / "2. All Segmentation Groundtruths" / split / folder).mkdir(parents=True, exist_ok=True)
    res = run_jobs(jobs, opt, workers, "synth idrid", out)
    for split in ("train", "test"):
        rows = [
            {"Image name": stem, "Retinopathy grade": res[i]["grade"], "Risk of macular edema ": res[i]["dme"]}
            for s, stem, i in grad_jobs
            if s == split
        ]
        df = pd.DataFrame(rows, columns=["Image name", "Retinopathy grade", "Risk of macular edema "])
        for j in range(8):  # the published CSVs carry empty trailing columns
            df[f"Unnamed: {j + 3}"] = ""
        csv = grading / "2. Groundtruths" / idrid.GRADING_CSV[split]
        csv.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(csv, index=False, header=[*df.columns[:3], *[""] * 8])


def _eophtha(out: Path, n: int, opt: Options, workers: int) -> None:
    rng = np.random.default_rng(np.random.SeedSequence([opt.seed, 10**6]))
    jobs: list[Job] = []
    patient = 0
    for part in ("EX", "MA"):
        top_name, lesion_dir, ann_dir, suffix = eo.PARTS[part]
        top = out / top_name
        n_part = max(2, n // 2) if part == "EX" else max(2, n - max(2, n // 2))
        n_lesion = max(1, n_part // 2)
        k = 0
        while k < n_part:
            patient += 1
            pid = f"E{patient:07d}"
            for _ in range(int(rng.integers(1, 4))):
                if k >= n_part:
                    break
                lesion = k < n_lesion
                kind = lesion_dir if lesion else "healthy"
                ext = ".JPG" if rng.random() < 0.15 else ".jpg"
                stem = f"C{len(jobs) + 1:07d}"
                img = top / kind / pid / f"{stem}{ext}"
                grade = (int(rng.integers(2, 5)) if part == "EX" else int(rng.integers(1, 4))) if lesion else 0
                masks = {part: top / ann_dir / pid / f"{stem}{suffix}.png"} if lesion else {}
                jobs.append(Job(len(jobs), grade, img, masks, write_empty_masks=True, mask_style="gray"))
                k += 1
            (top / kind / pid).mkdir(parents=True, exist_ok=True)
            (top / kind / pid / "Thumbs.db").write_bytes(b"\x00" * 16)
    res = run_jobs(jobs, opt, workers, "synth e-ophtha", out)
    del res


def _eyepacs(out: Path, n: int, opt: Options, workers: int) -> None:
    rng = np.random.default_rng(np.random.SeedSequence([opt.seed, 10**6]))
    n_pat = max(2, (n + 1) // 2)
    n_train = max(1, round(n_pat * 0.8))
    grades = sample_grades(rng, n_pat, [0.6, 0.1, 0.18, 0.07, 0.05], minimum=(0, 2, 4, 1, 3))
    jobs: list[Job] = []
    rows: dict[str, list] = {"train": [], "test": []}
    count = 0
    for p in range(n_pat):
        split = "train" if p < n_train else "test"
        pid = 10 + 3 * p  # EyePACS ids are sparse integers
        for eye in ("left", "right"):
            if count >= max(n, 2):
                break
            # both eyes of a patient usually share the grade; the second one sometimes differs by one
            shift = int(rng.integers(-1, 2)) if (eye == "right" and rng.random() < 0.2) else 0
            g = int(np.clip(grades[p] + shift, 0, 4))
            stem = f"{pid}_{eye}"
            jobs.append(Job(len(jobs), g, out / split / f"{stem}.jpeg", {}, eye=eye))
            rows[split].append((stem, len(jobs) - 1))
            count += 1
    res = run_jobs(jobs, opt, workers, "synth eyepacs", out)
    pd.DataFrame({"image": [s for s, _ in rows["train"]], "level": [res[i]["grade"] for _, i in rows["train"]]}).to_csv(
        out / "trainLabels.csv", index=False
    )
    if rows["test"]:
        usage = ["Public" if rng.random() < 0.2 else "Private" for _ in rows["test"]]
        pd.DataFrame(
            {"image": [s for s, _ in rows["test"]], "level": [res[i]["grade"] for _, i in rows["test"]], "Usage": usage}
        ).to_csv(out / "retinopathy_solution.csv", index=False)


MESSIDOR_BASES = [
    "Base11",
    "Base12",
    "Base13",
    "Base14",
    "Base21",
    "Base22",
    "Base23",
    "Base24",
    "Base31",
    "Base32",
    "Base33",
    "Base34",
]
MESSIDOR_DEPTS = {"1": "Service Ophtalmologie Lariboisière", "2": "CHU de St Etienne", "3": "LaTIM - CHU de BREST"}


def _messidor(out: Path, n: int, opt: Options, workers: int) -> None:
    rng = np.random.default_rng(np.random.SeedSequence([opt.seed, 10**6]))
    grades = sample_grades(rng, n, [0.45, 0.15, 0.2, 0.2, 0.0], minimum=(0, 1, 2, 3))
    jobs: list[Job] = []
    per_base: dict[str, list[tuple[str, int]]] = {}
    for k in range(n):
        base = MESSIDOR_BASES[min(k // 100, len(MESSIDOR_BASES) - 1)]
        name = f"2005{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}_{rng.integers(10000, 99999)}_{k:04d}_PP.tif"
        jobs.append(Job(len(jobs), grades[k], out / base / name, {}))
        per_base.setdefault(base, []).append((name, len(jobs) - 1))
    res = run_jobs(jobs, opt, workers, "synth messidor", out)
    for base, items in per_base.items():
        df = pd.DataFrame(
            {
                "Image name": [name for name, _ in items],
                "Ophthalmologic department": [MESSIDOR_DEPTS[base[4]]] * len(items),
                # Messidor grades 0-3; the synthetic ICDR grade 4 does not occur here
                "Retinopathy grade": [min(3, res[i]["grade"]) for _, i in items],
                "Risk of macular edema ": [res[i]["dme"] for _, i in items],
            }
        )
        _write_xls(df, out / base / f"Annotation_{base}.xls")


def _write_xls(df: pd.DataFrame, path: Path) -> None:
    """Write a legacy .xls workbook with sheet ``Feuil1`` as Messidor ships it (falls back to .csv)."""
    try:
        import xlwt
    except ImportError:  # pragma: no cover - xlwt is a dependency; keep a readable fallback
        log.warning("xlwt is not installed: writing %s as CSV", path.with_suffix(".csv"))
        df.to_csv(path.with_suffix(".csv"), index=False)
        return
    wb = xlwt.Workbook()
    ws = wb.add_sheet("Feuil1")
    for j, col in enumerate(df.columns):
        ws.write(0, j, col)
    for i, row in enumerate(df.itertuples(index=False), start=1):
        for j, v in enumerate(row):
            ws.write(i, j, v.item() if hasattr(v, "item") else v)
    wb.save(str(path))


def _folder(out: Path, n: int, opt: Options, workers: int) -> None:
    """The generic "bring your own data" layout (:mod:`retinalab.datasets.folder`): two clinics'
    nested folders of JPEG and PNG photographs, two eyes per patient, a labels.csv with grades for most
    images, referable-only labels for some and none for the rest, an official test split, and
    lesion masks (all four, empty ones included) for a third of the images."""
    rng = np.random.default_rng(np.random.SeedSequence([opt.seed, 10**6]))
    grades = sample_grades(rng, n, [0.4, 0.1, 0.25, 0.15, 0.1], minimum=(0, 2, 1, 3, 4))
    n_pat = (n + 1) // 2
    n_test_pat = max(1, round(n_pat * 0.2))
    jobs: list[Job] = []
    rows = []
    for i in range(n):
        pat = i // 2
        clinic = "clinic_a" if pat % 2 == 0 else "clinic_b"
        stem = f"P{pat:04d}_{'left' if i % 2 == 0 else 'right'}"
        path = out / clinic / ("images" if clinic == "clinic_a" else "photos") / f"{stem}{'.jpg' if i % 3 else '.png'}"
        masked = i % 3 == 0
        masks = {les: out / "masks" / les / f"{stem}.png" for les in ("MA", "HE", "EX", "SE")} if masked else {}
        jobs.append(
            Job(
                i,
                grades[i],
                path,
                masks,
                write_empty_masks=True,
                mask_style="gray",
                eye="left" if i % 2 == 0 else "right",
            )
        )
        label_kind = "grade" if i % 10 < 7 else ("referable" if i % 10 == 7 else "none")
        rows.append(
            (
                path.relative_to(out).as_posix(),
                label_kind,
                f"P{pat:04d}",
                "test" if pat >= n_pat - n_test_pat else "train",
            )
        )
    res = run_jobs(jobs, opt, workers, "synth folder", out)
    table = {"image": [], "grade": [], "referable": [], "patient": [], "split": []}
    for i, (rel, kind, patient, split) in enumerate(rows):
        g = res[i]["grade"]
        table["image"].append(rel)
        table["grade"].append(g if kind == "grade" else "")
        table["referable"].append(int(g >= 2) if kind == "referable" else "")
        table["patient"].append(patient)
        table["split"].append(split)
    pd.DataFrame(table).to_csv(out / "labels.csv", index=False)


WRITERS: dict[str, Callable[[Path, int, Options, int], None]] = {
    "idrid": _idrid,
    "eophtha": _eophtha,
    "eyepacs": _eyepacs,
    "messidor": _messidor,
    "folder": _folder,
}


def write_synthetic(
    dataset: SynthDataset,
    out: str | Path,
    num_images: int = 24,
    seed: int = 0,
    size: tuple[int, int] = (1024, 680),
    lesion_scale: float = 1.0,
    lesion_contrast: float = 1.0,
    workers: int = 1,
    overwrite: bool = False,
    preset: str | SynthPreset = "classic",
) -> Path:
    """Write a synthetic dataset in the layout of ``dataset`` to ``out`` (atomically).

    Args:
        dataset: which published layout to imitate.
        out: destination folder; must not exist (or be empty) unless ``overwrite``.
        num_images: number of photographs (IDRiD: one third segmentation, the rest grading).
        seed: random seed; the same seed gives byte-identical images.
        size: ``(width, height)`` of each photograph.
        lesion_scale: multiplies the preset's lesion sizes.
        lesion_contrast: multiplies the preset's lesion opacity.
        workers: processes drawing images in parallel (does not change the output).
        overwrite: replace an existing non-empty ``out``.
        preset: generator settings (:mod:`retinalab.synthetic.presets`): ``classic`` (default, the
            first generator), ``benchmark`` (no shortcuts; paper 000's benchmark and ``make demo``)
            or ``easy`` (large, high-contrast lesions, for learning tests).

    Returns:
        ``out`` as a :class:`~pathlib.Path`; ``out/synthetic.json`` records the arguments and preset.
    """
    if dataset not in WRITERS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {sorted(WRITERS)}")
    if num_images < 2:
        raise ConfigError(f"num_images must be >= 2, got {num_images}")
    style = get_preset(preset)
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        WRITERS[dataset](
            tmp, num_images, Options(seed, tuple(size), lesion_scale, lesion_contrast, preset=style), workers
        )
        # how the set was drawn (readers ignore it): a later run can tell whether it may reuse the folder
        settings = {
            "layout": dataset,
            "num_images": num_images,
            "seed": seed,
            "size": list(size),
            "lesion_scale": lesion_scale,
            "lesion_contrast": lesion_contrast,
            "preset": asdict(style),
            "truth": {
                "folder": TRUTH_DIR,
                "what": "drawn lesion masks of the photographs the layout labels per image only: "
                "<folder>/<image path without suffix>_<structure>.png, grey, absent structures without a file; no "
                "reader looks here",
            },
        }
        (tmp / SETTINGS_FILE).write_text(json.dumps(settings, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
