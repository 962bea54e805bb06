"""Synthetic colour fundus photographs with exact lesion masks.

Draws a plausible photograph: black surround, orange-red fundus with vignetting and texture, a
bright optic disc, a darker macula and fovea, branching vessel arcades leaving the disc, and by DR
grade microaneurysms (tiny dark-red dots), haemorrhages (larger red blots), hard exudates (bright
yellow clusters) and soft exudates (pale fuzzy patches). Every lesion is drawn into its mask with
the same geometry, so masks are exact. Output is a pure function of the random generator.

This is a product feature (demo, smoke tests, CI, teaching), not a substitute for real data: the
statistics of real fundus images are far richer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ..datasets.base import STRUCTURES
from .presets import SynthPreset, get_preset
from .variety import (
    choose_families,
    draw_background,
    draw_distractors,
    draw_lesion,
    paint_lesions,
    tessellation_pattern,
)

# How many lesions of each kind a grade draws (ICDR-like: 1 = MA only, 2 = moderate, 3/4 = severe).
LESION_COUNTS: dict[int, dict[str, tuple[int, int]]] = {
    0: {"MA": (0, 0), "HE": (0, 0), "EX": (0, 0), "SE": (0, 0)},
    1: {"MA": (2, 8), "HE": (0, 0), "EX": (0, 0), "SE": (0, 0)},
    2: {"MA": (5, 16), "HE": (1, 6), "EX": (1, 3), "SE": (0, 1)},
    3: {"MA": (8, 24), "HE": (6, 16), "EX": (2, 6), "SE": (1, 3)},
    4: {"MA": (10, 30), "HE": (10, 24), "EX": (3, 7), "SE": (2, 4)},
}

COLOURS = {
    "fundus": (0.86, 0.40, 0.17),
    "vessel": (0.42, 0.07, 0.05),
    "disc": (1.0, 0.86, 0.60),
    "MA": (0.40, 0.04, 0.04),
    "HE": (0.46, 0.05, 0.04),
    "EX": (1.0, 0.90, 0.42),
    "SE": (0.96, 0.90, 0.76),
}


@dataclass
class SyntheticFundus:
    """One synthetic photograph.

    Attributes:
        image: H x W x 3 uint8 RGB.
        masks: ``MA``, ``HE``, ``EX``, ``SE``, ``OD`` -> H x W bool.
        grade: DR grade 0-4 the lesions were drawn for.
        dme_risk: 0 no exudate, 1 exudates farther than one disc diameter from the fovea, 2 closer.
        eye: ``"left"`` or ``"right"``.
        families: the look each lesion type took (``scarce``: one of
            :data:`~retinalab.synthetic.variety.FAMILIES`), ``None`` for the presets with one look.
        distractors: how many look-alikes of each kind were painted (none of them in ``masks``).
    """

    image: np.ndarray
    masks: dict[str, np.ndarray]
    grade: int
    dme_risk: int
    eye: str
    families: dict[str, str] | None = None
    distractors: dict[str, int] = field(default_factory=dict)


def _lowfreq_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    small = rng.standard_normal((cells, max(1, round(cells * w / h)))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _branch(
    rng: np.random.Generator,
    layer: np.ndarray,
    start: np.ndarray,
    angle: float,
    length: float,
    width: float,
    depth: int,
    curl: float,
) -> None:
    """Draw one vessel as a wandering polyline and recurse into its branches."""
    steps = max(4, int(length / 6))
    pts = [start.copy()]
    p, a = start.astype(np.float64), angle
    step = length / steps
    for k in range(steps):
        a += curl / steps + rng.normal(0, 0.06)
        p = p + step * np.array([np.cos(a), np.sin(a)])
        pts.append(p.copy())
        if depth > 0 and k > 2 and rng.random() < 0.09:
            side = rng.choice([-1, 1])
            _branch(
                rng,
                layer,
                p,
                a + side * rng.uniform(0.4, 1.0),
                length * rng.uniform(0.3, 0.55),
                width * 0.65,
                depth - 1,
                curl * 0.5,
            )
    thickness = max(1, int(round(width)))
    cv2.polylines(layer, [np.asarray(pts, dtype=np.int32)], False, 1.0, thickness, cv2.LINE_AA)


def synth_fundus(
    rng: np.random.Generator,
    size: tuple[int, int] = (1024, 680),
    grade: int = 0,
    eye: str | None = None,
    lesion_scale: float = 1.0,
    lesion_contrast: float = 1.0,
    noise: float = 0.012,
    preset: str | SynthPreset = "classic",
) -> SyntheticFundus:
    """Draw one synthetic fundus photograph.

    Args:
        rng: source of randomness (output is a pure function of its state).
        size: ``(width, height)`` in pixels.
        grade: DR grade 0-4; sets how many lesions of each kind are drawn (:data:`LESION_COUNTS`).
        eye: ``"left"``/``"right"`` (optic disc on the right/left of the image); random if ``None``.
        lesion_scale: multiplies the preset's lesion radii.
        lesion_contrast: multiplies the preset's lesion opacity (0 draws masks without visible lesions).
        noise: std of the additive sensor noise (fraction of full scale).
        preset: a :class:`~retinalab.synthetic.presets.SynthPreset` or its name: ``classic`` (the
            first generator: lesions only inside 0.88 R, microaneurysms ~0.6% of the FOV radius),
            ``benchmark`` (no brightness, position or invisible-lesion shortcut) or ``easy``.
    """
    style = get_preset(preset).scaled(lesion_scale, lesion_contrast)
    if grade not in LESION_COUNTS:
        raise ValueError(f"grade must be 0-4, got {grade}")
    w, h = size
    if min(w, h) < 32:
        raise ValueError(f"size {w}x{h} is too small for a fundus photograph (min 32 px)")
    eye = eye or ("left" if rng.random() < 0.5 else "right")
    cx, cy = w / 2 + rng.normal(0, 0.01 * w), h / 2 + rng.normal(0, 0.01 * h)
    R = 0.485 * min(w, h) * rng.uniform(0.97, 1.03)
    # scarce: pigmentation, colour cast, tessellation and field-of-view shape vary per photograph
    backdrop = draw_background(rng) if style.background == "varied" else None
    if backdrop is not None:
        R = 0.5 * min(w, h) * backdrop.radius
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / R
    fov = r <= 1.0
    if backdrop is not None and backdrop.cut < 1.0:
        fov &= np.abs(yy - cy) <= backdrop.cut * R  # the top and bottom cut off, as many cameras do

    # background fundus: colour, vignetting, low-frequency choroidal texture
    tint = np.array(COLOURS["fundus"], np.float32) * rng.uniform(0.88, 1.08, 3).astype(np.float32)
    if backdrop is not None:
        tint = backdrop.tint
    # per-photograph vignetting and exposure (drawn only when the preset varies them, so the classic
    # preset's random stream, and its photographs, are unchanged)
    v_lo, v_hi = style.vignetting
    strength = v_lo if v_lo == v_hi else rng.uniform(v_lo, v_hi)
    e_lo, e_hi = style.exposure
    exposure = e_lo if e_lo == e_hi else rng.uniform(e_lo, e_hi)
    vignette = exposure * (1.0 - strength * np.clip(r, 0, 1) ** 2.4)
    texture = 1.0 + 0.05 * _lowfreq_noise(rng, h, w, 6) + 0.02 * _lowfreq_noise(rng, h, w, 40)
    if backdrop is not None and backdrop.tessellation > 0:
        texture = texture * (1.0 - 0.22 * backdrop.tessellation * tessellation_pattern(rng, h, w, R))
    img = tint[None, None, :] * (vignette * texture)[..., None]

    side = 1 if eye == "left" else -1
    disc = np.array([cx + side * 0.42 * R, cy + rng.normal(0, 0.04 * R)])
    macula = np.array([cx - side * 0.12 * R, cy + rng.normal(0, 0.03 * R)])
    disc_r = 0.095 * R * rng.uniform(0.9, 1.1)

    # macula: darker, fovea darker still
    dm = ((xx - macula[0]) ** 2 + (yy - macula[1]) ** 2) / (0.16 * R) ** 2
    img *= (1.0 - 0.28 * np.exp(-dm) - 0.12 * np.exp(-dm * 12))[..., None]

    # vessels: four arcades leaving the disc, branching
    vessels = np.zeros((h, w), np.float32)
    base_w = max(1.0, 0.018 * R)
    for ang, curl in ((-0.35, -1.3), (0.35, 1.3), (-2.6, 0.7), (2.6, -0.7)):
        a = ang if side < 0 else np.pi - ang
        c = curl if side < 0 else -curl
        _branch(rng, vessels, disc.copy(), a + rng.normal(0, 0.1), R * rng.uniform(1.0, 1.4), base_w, 3, c)
    vessels = cv2.GaussianBlur(vessels, (0, 0), max(0.5, 0.003 * R))
    va = 0.6 * np.clip(vessels, 0, 1)[..., None]
    img = img * (1 - va) + np.array(COLOURS["vessel"], np.float32) * va

    # optic disc: bright, soft-edged; cup brighter
    dd = np.sqrt((xx - disc[0]) ** 2 + (yy - disc[1]) ** 2) / disc_r
    da = np.clip(1.3 - dd, 0, 1)[..., None] ** 0.7
    img = img * (1 - 0.85 * da) + np.array(COLOURS["disc"], np.float32) * 0.85 * da
    img += 0.12 * np.exp(-((dd / 0.45) ** 2))[..., None]
    masks: dict[str, np.ndarray] = {"OD": (dd <= 1.0) & fov}
    drawn_distractors: dict[str, int] = {}
    if style.distractors > 0:  # look-alikes, never in a mask, as many in healthy as in diseased photographs
        drawn_distractors = draw_distractors(
            rng, img, fov, vessels, (cx, cy), R, macula, style.distractors, style.ma_radius
        )

    # lesions
    counts = LESION_COUNTS[grade]
    layers = {k: np.zeros((h, w), np.float32) for k in ("MA", "HE", "EX", "SE")}
    mask_layers = {k: np.zeros((h, w), np.uint8) for k in ("MA", "HE", "EX", "SE")}
    s = style.lesion_scale * R
    # classic: centres within 0.88 R, kept 1.3 disc radii + margin off the disc; fov: uniform over the
    # whole field of view, only off the disc itself
    reach, disc_gap, use_margin = (0.88, 1.3, True) if style.placement == "central" else (1.0, 1.0, False)

    def place(margin: float) -> np.ndarray | None:
        for _ in range(50):
            rad = reach * np.sqrt(rng.random())
            th = rng.uniform(0, 2 * np.pi)
            p = np.array([cx + rad * R * np.cos(th), cy + rad * R * np.sin(th)])
            if backdrop is not None and not fov[int(np.clip(p[1], 0, h - 1)), int(np.clip(p[0], 0, w - 1))]:
                continue  # outside a cut field of view
            if np.linalg.norm(p - disc) > disc_r * disc_gap + (margin if use_margin else 0.0):
                return p
        return None

    ex_centres = []
    families = None
    if style.lesion_families:  # scarce: each lesion type takes one of several looks in this photograph
        families = choose_families(rng)
        centre_layer = np.zeros((h, w), np.float32)
        for kind in ("MA", "HE", "EX", "SE"):
            lo, hi = counts[kind]
            for _ in range(int(rng.integers(lo, hi + 1))):
                p = place(0.05 * R)
                if p is None:
                    continue
                if kind == "EX":
                    ex_centres.append(p)
                draw_lesion(
                    rng,
                    kind,
                    families[kind],
                    mask_layers[kind],
                    centre_layer if kind == "HE" else layers[kind],
                    p,
                    s,
                    style.ma_radius,
                )
        for kind in ("SE", "HE", "MA", "EX"):
            masks[kind] = paint_lesions(
                rng,
                img,
                kind,
                families[kind],
                mask_layers[kind],
                centre_layer if kind == "HE" else layers[kind],
                fov,
                R,
                style.lesion_contrast,
            )
    for kind in ("MA", "HE", "EX", "SE") if not style.lesion_families else ():  # the other presets' lesions
        lo, hi = counts[kind]
        for _ in range(int(rng.integers(lo, hi + 1))):
            p = place(0.05 * R)
            if p is None:
                continue
            if kind == "MA":
                rad = max(1, int(round(s * rng.uniform(*style.ma_radius))))
                cv2.circle(mask_layers[kind], tuple(int(v) for v in p), rad, 1, -1)
            elif kind == "HE":
                axes = (max(2, int(s * rng.uniform(0.012, 0.035))), max(2, int(s * rng.uniform(0.01, 0.03))))
                cv2.ellipse(mask_layers[kind], tuple(int(v) for v in p), axes, rng.uniform(0, 180), 0, 360, 1, -1)
            elif kind == "EX":
                ex_centres.append(p)
                for _ in range(int(rng.integers(4, 18))):
                    q = p + rng.normal(0, 0.025 * s, 2)
                    rad = max(1, int(round(s * rng.uniform(0.003, 0.011))))
                    cv2.circle(mask_layers[kind], tuple(int(v) for v in q), rad, 1, -1)
            else:  # SE: pale fuzzy patch; the mask is the visibly pale core
                axes = (max(2, int(s * rng.uniform(0.025, 0.05))), max(2, int(s * rng.uniform(0.018, 0.035))))
                blob = np.zeros((h, w), np.float32)
                cv2.ellipse(blob, tuple(int(v) for v in p), axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
                blob = cv2.GaussianBlur(blob, (0, 0), max(1.0, axes[1] / 2))
                layers[kind] = np.maximum(layers[kind], blob / max(blob.max(), 1e-6))
                mask_layers[kind] |= (layers[kind] > 0.3).astype(np.uint8)
    opacity = {"MA": 0.9, "HE": 0.85, "EX": 0.9, "SE": 0.65}
    for kind in ("SE", "HE", "MA", "EX") if not style.lesion_families else ():
        m = mask_layers[kind].astype(bool) & fov
        masks[kind] = m
        if kind != "SE":
            # anti-aliased edge: blur the hard shape slightly, but keep it opaque inside the mask
            soft = cv2.GaussianBlur(m.astype(np.float32), (0, 0), 0.6)
            layers[kind] = np.maximum(soft, m.astype(np.float32))
        a = np.clip(opacity[kind] * style.lesion_contrast * layers[kind], 0, 1)[..., None]
        img = img * (1 - a) + np.array(COLOURS[kind], np.float32) * a

    img += rng.normal(0, noise, img.shape).astype(np.float32)
    img = np.clip(img, 0, 1) * fov[..., None]
    image = (img * 255 + 0.5).astype(np.uint8)

    dme = 0
    if ex_centres:
        dist = min(np.linalg.norm(p - macula) for p in ex_centres)
        dme = 2 if dist < 2 * disc_r else 1
    masks = {k: masks[k] for k in STRUCTURES}
    names = {k: f.name for k, f in families.items()} if families is not None else None
    return SyntheticFundus(
        image=image, masks=masks, grade=grade, dme_risk=dme, eye=eye, families=names, distractors=drawn_distractors
    )
