"""Drawing a synthetic dataset's photographs in parallel: one :class:`Job` per photograph (where its image
and masks go), the generator's :class:`Options`, and :func:`run_jobs`, deterministic for a seed whatever
the number of workers (image ``i`` is drawn from ``SeedSequence([seed, i])``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..datasets.truth import truth_stem
from ..preprocessing.building import pool_context
from .fundus import synth_fundus
from .presets import SynthPreset, get_preset


@dataclass(frozen=True)
class Job:
    """One image to draw and where its files go."""

    index: int
    grade: int
    image_path: Path
    mask_paths: dict[str, Path]  # structure -> file; written only if the mask is non-empty
    write_empty_masks: bool = False
    mask_style: Literal["red_rgb", "gray"] = "red_rgb"
    eye: str | None = None
    truth_stem: Path | None = None  # image-level photographs: <root>/_truth/<image path without suffix>


@dataclass(frozen=True)
class Options:
    seed: int
    size: tuple[int, int]
    lesion_scale: float
    lesion_contrast: float
    jpeg_quality: int = 92
    preset: SynthPreset = get_preset("classic")


def _save_image(arr: np.ndarray, path: Path, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img.save(path, quality=quality)
    else:
        img.save(path)


def _save_mask(m: np.ndarray, path: Path, style: Literal["red_rgb", "gray"]) -> None:
    """One structure's mask: red on black (IDRiD) or grey 0/255; TIFFs LZW-compressed as published masks
    are (an uncompressed 4288x2848 RGB TIFF is 36 MB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {"compression": "tiff_lzw"} if path.suffix.lower() in (".tif", ".tiff") else {}
    if style == "red_rgb":
        rgb = np.zeros((*m.shape, 3), np.uint8)
        rgb[m, 0] = 255
        Image.fromarray(rgb).save(path, **kw)
    else:
        Image.fromarray(m.astype(np.uint8) * 255).save(path, **kw)


def _draw(args: tuple[Job, Options]) -> dict:
    job, opt = args
    rng = np.random.default_rng(np.random.SeedSequence([opt.seed, job.index]))
    f = synth_fundus(rng, opt.size, job.grade, job.eye, opt.lesion_scale, opt.lesion_contrast, preset=opt.preset)
    _save_image(f.image, job.image_path, opt.jpeg_quality)
    written = {}
    for name, path in job.mask_paths.items():
        m = f.masks[name]
        if not m.any() and not job.write_empty_masks:
            continue  # as in IDRiD: an absent lesion has no mask file
        _save_mask(m, path, job.mask_style)
        written[name] = True
    if job.truth_stem is not None:  # grey PNGs, one per structure drawn (absent ones: no file, as IDRiD)
        for name, m in f.masks.items():
            if m.any():
                _save_mask(m, job.truth_stem.parent / f"{job.truth_stem.name}_{name}.png", "gray")
    return {"index": job.index, "grade": f.grade, "dme": f.dme_risk, "eye": f.eye, "masks": written}


def sample_grades(rng: np.random.Generator, n: int, probs: list[float], minimum: tuple[int, ...] = ()) -> list[int]:
    """Sample grades, then force the first few so small sets still contain each required grade."""
    g = list(rng.choice(len(probs), size=n, p=probs))
    for i, grade in enumerate(minimum[:n]):
        g[i] = grade
    rng.shuffle(g)
    return [int(x) for x in g]


def run_jobs(jobs: list[Job], opt: Options, workers: int, desc: str, root: Path | None = None) -> dict[int, dict]:
    """Draw ``jobs``; with ``root`` (the dataset folder), every photograph without a published mask
    gets its drawn masks under ``root/_truth`` (:data:`TRUTH_DIR`)."""
    if root is not None:
        jobs = [j if j.mask_paths else replace(j, truth_stem=truth_stem(root, j.image_path)) for j in jobs]
    args = [(j, opt) for j in jobs]
    out: dict[int, dict] = {}
    if workers <= 1:
        it = map(_draw, args)
        pool = None
    else:
        pool = pool_context().Pool(workers)  # fork only while this process has one thread
        it = pool.imap_unordered(_draw, args)
    try:
        for res in tqdm(it, total=len(jobs), desc=desc, unit="img"):
            out[res["index"]] = res
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return out
