"""Measure the shortcuts a synthetic preset offers a patch classifier (paper 000's grid).

A benchmark on synthetic photographs says something about a method only if the labels can be
predicted from the lesions alone. :func:`shortcut_audit` draws photographs of a preset, applies
paper 000's preprocessing (field-of-view crop, resize, max-normalisation) and an 8x8 grid of 32 px
patches, and reports, each as an AUROC where 0.5 means "no shortcut":

* ``image_brightness_auroc``: a photograph's mean background brightness (field of view, lesion
  pixels left out) as a score for "diseased" (exposure, tint or vignetting that follow the grade);
* ``patch_brightness_auroc``: among patches wholly inside the field of view, a patch's background
  brightness relative to its photograph's as a score for "lesion patch" (lesions drawn where the
  fundus is brighter);

and facts about where and how visible the lesions are:

* ``lesion_share_outside_088``: share of lesion pixels beyond 0.88 of the field-of-view radius, whose
  ring is 23% of the field of view's area: about 0.23 where lesions are uniform over the retina,
  about 0 on ``classic``, where they are drawn inside 0.88 R only. Patches on that rim are the darkest
  (vignetting) and, on ``classic``, never diseased: the position shortcut behind the first
  benchmark's image AUROCs below 0.5;
* ``grade1_visible``: share of grade-1 photographs (microaneurysms only) in which at least one
  microaneurysm is darker than its neighbourhood (7 px median, green channel) by more than five
  noise standard deviations (the robust std of the same contrast over lesion-free fundus), on the
  256 px scale the 32 px patches see;
* ``ma_diameter_px``: median equivalent diameter of those microaneurysms on that scale.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..metrics.bootstrap import exact_auroc
from ..preprocessing.fundus import find_fov, normalize_max, resize_mask
from ..preprocessing.patches import PatchGrid
from .fundus import synth_fundus
from .presets import SynthPreset, get_preset


def shortcut_audit(
    preset: str | SynthPreset = "benchmark",
    num_images: int = 120,
    size: tuple[int, int] = (1024, 680),
    seed: int = 0,
    grid: PatchGrid = PatchGrid(256, 32, 32, 32),
) -> dict[str, float]:
    """Shortcut statistics of ``num_images`` photographs of ``preset`` (half grade 0, the rest
    grades 1-4 in turn), at the resolution ``grid`` works on (default: 256 px, paper 000's 8x8
    grid of 32 px patches after downsampling).

    Returns:
        the AUROCs and shares described in the module docstring, plus ``images`` (photographs drawn).
    """
    style = get_preset(preset)
    n = grid.image_size
    img_score, img_label = [], []
    patch_score, patch_label = [], []
    lesion_out, lesion_all = 0, 0
    ma_contrast: list[float] = []
    ma_diameter: list[float] = []
    background_drops: list[np.ndarray] = []
    for i in range(num_images):
        grade = 0 if i % 2 == 0 else 1 + (i // 2) % 4
        f = synth_fundus(np.random.default_rng(np.random.SeedSequence([seed, i])), size, grade, preset=style)
        box = find_fov(f.image)
        image = normalize_max(box.apply(f.image, n, cv2.INTER_AREA)).astype(np.float32)
        union = np.logical_or.reduce([f.masks[k] for k in ("MA", "HE", "EX", "SE")])
        lesion = resize_mask(union, box, n)
        fov_full = f.image.max(2) > 0
        w = f.image.shape[1]
        if union.any():
            ys, xs = np.nonzero(fov_full)
            cy, cx, radius = ys.mean(), xs.mean(), np.sqrt(fov_full.sum() / np.pi)
            ly, lx = np.nonzero(union)
            lesion_out += int((np.hypot(ly - cy, lx - cx) > 0.88 * radius).sum())
            lesion_all += len(ly)
        # pixels wholly inside the field of view at the grid's scale
        fov = box.apply(fov_full.astype(np.float32), n, cv2.INTER_AREA) > 0.99
        lum = image.mean(2)
        background = fov & ~lesion
        mean_background = float(lum[background].mean())
        img_score.append(mean_background)
        img_label.append(int(grade > 0))
        fov_frac = grid.lesion_fraction(fov)
        les_frac = grid.lesion_fraction(lesion)
        for (_, _, y, x), ff, lf in zip(grid.coords(), fov_frac, les_frac, strict=True):
            if ff < 1.0:
                continue
            win = (slice(y, y + grid.patch_size), slice(x, x + grid.patch_size))
            bg = background[win]
            if not bg.any():
                continue
            # relative to the photograph's own background: exposure and tint, which vary between
            # photographs, are the image-level figure's business; this one sees position
            b = float(lum[win][bg].mean()) / mean_background
            patch_score.append(b)
            patch_label.append(int(lf > 0))
        # microaneurysm contrast on the patch scale: local median minus the pixel, green channel
        green = image[..., 1]
        drop = cv2.medianBlur(green.astype(np.uint8), 7).astype(np.float32) - green
        if grade == 0:
            inner = cv2.erode(fov.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
            background_drops.append(drop[inner])
        elif grade == 1:
            ma = resize_mask(f.masks["MA"], box, n)
            ma_contrast.append(float(drop[ma].max()) if ma.any() else 0.0)
            # equivalent diameters of the microaneurysms, in pixels of the grid's scale
            _, _, stats, _ = cv2.connectedComponentsWithStats(f.masks["MA"].astype(np.uint8), connectivity=8)
            side = (box.x1 - box.x0) * w
            ma_diameter.extend(2 * np.sqrt(stats[1:, cv2.CC_STAT_AREA] / np.pi) * n / side)
    # visible: darker than its neighbourhood by 5 noise standard deviations (robust std of the same
    # contrast over lesion-free fundus of the healthy photographs)
    if background_drops:
        d = np.concatenate(background_drops)
        threshold = 5 * 1.4826 * float(np.median(np.abs(d - np.median(d))))
    else:
        threshold = float("nan")
    return {
        "images": float(num_images),
        "image_brightness_auroc": exact_auroc(np.array(img_score), np.array(img_label)),
        "patch_brightness_auroc": exact_auroc(np.array(patch_score), np.array(patch_label)),
        "lesion_share_outside_088": lesion_out / lesion_all if lesion_all else float("nan"),
        "grade1_visible": float(np.mean([c > threshold for c in ma_contrast])) if ma_contrast else float("nan"),
        "ma_diameter_px": float(np.median(ma_diameter)) if ma_diameter else float("nan"),
    }
