"""What the ``scarce`` preset adds to the generator: lesion appearance families, look-alikes that are not
lesions, and backgrounds that vary per photograph.

Paper 000's claim is about a regime where 10 labelled photographs do not show a network the variety
of the lesions. On real photographs that variety has three sources, each drawn here per photograph:

* **Lesion appearance families** (:data:`FAMILIES`): each lesion type has several looks that differ in
  colour, size, shape, edge and texture (a haemorrhage is a dark blot, a thin flame-shaped streak, a
  cluster of dots, a white-centred blot or a lighter irregular blotch). Every photograph draws one
  family per lesion type, so a few photographs show only some of the looks a test set holds.
* **Look-alikes** (:func:`draw_distractors`): drusen (pale yellow spots, like exudates), light
  reflexes (bright arcs and glints), dark dots where vessels cross or kink (like microaneurysms) and
  pigment clumps (like haemorrhages). They are never in a lesion mask and their number does not depend
  on the grade: a network must learn what they are not.
* **Backgrounds** (:func:`draw_background`): pigmentation from a light orange to a dark brown fundus,
  choroidal tessellation of varying strength, a colour cast, and a circular or top/bottom-cut field
  of view of varying size.

Everything here is drawn from the photograph's generator only when the preset asks for it, so the
other presets' photographs are unchanged byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

Colour = tuple[float, float, float]


@dataclass(frozen=True)
class Family:
    """One look of a lesion type.

    Attributes:
        name: what it resembles.
        shape: the geometry (per lesion type, see :func:`draw_lesion`).
        colour: RGB in [0, 1].
        opacity: alpha of the lesion's core.
        size: multiplies the lesion type's base size.
        edge: blur of the outline, as a fraction of the field-of-view radius (0.0025 is about 0.6 px
            on a 510 px high photograph: an anti-aliased but sharp edge).
        solid: the core keeps full opacity up to the outline (the mask is the drawn shape); otherwise
            the lesion fades from its centre and the mask is where it is at least 30% opaque.
        texture: amplitude of a speckle that modulates the opacity (0: flat).
        centre: colour of a pale centre (a white-centred haemorrhage), or ``None``.
    """

    name: str
    shape: str
    colour: Colour
    opacity: float
    size: float = 1.0
    edge: float = 0.0025
    solid: bool = True
    texture: float = 0.0
    centre: Colour | None = None


#: the looks each lesion type can take in a ``scarce`` photograph (one family per type per photograph)
FAMILIES: dict[str, tuple[Family, ...]] = {
    "MA": (
        Family("dark red dot", "dot", (0.40, 0.04, 0.04), 0.9),
        Family("dot with a soft halo", "dot", (0.36, 0.06, 0.05), 0.85, 1.3, edge=0.006, solid=False),
        Family("brownish oval", "oval", (0.30, 0.07, 0.03), 0.8, 1.2),
        Family("dark purple pair", "pair", (0.28, 0.04, 0.12), 0.85, 0.9),
    ),
    "HE": (
        Family("dark blot", "blot", (0.46, 0.05, 0.04), 0.85),
        Family("flame-shaped streak", "flame", (0.55, 0.08, 0.05), 0.8, edge=0.004, texture=0.3),
        Family("dot-blot cluster", "dots", (0.36, 0.04, 0.05), 0.9, 0.8),
        Family("white-centred blot", "blot", (0.50, 0.06, 0.05), 0.85, 1.2, centre=(0.95, 0.88, 0.80)),
        Family("light irregular blotch", "blotch", (0.58, 0.13, 0.08), 0.8, 1.2, edge=0.006, solid=False, texture=0.35),
    ),
    "EX": (
        Family("yellow cluster", "cluster", (1.0, 0.90, 0.42), 0.9),
        Family("waxy cream plaque", "plaque", (0.98, 0.92, 0.70), 0.85, edge=0.006, solid=False, texture=0.25),
        Family("circinate ring", "ring", (1.0, 0.86, 0.38), 0.9),
        Family("fine glints", "speckle", (0.92, 0.95, 0.50), 0.85),
    ),
    "SE": (
        Family("pale fluffy patch", "fluffy", (0.96, 0.90, 0.76), 0.65, solid=False),
        Family("grey-white feathery patch", "fluffy", (0.86, 0.86, 0.84), 0.7, 1.2, solid=False, texture=0.5),
        Family("small opaque cotton-wool spot", "fluffy", (1.0, 0.97, 0.90), 0.8, 0.6, solid=False),
    ),
}


def choose_families(rng: np.random.Generator) -> dict[str, Family]:
    """One family per lesion type, uniformly (the draws of one photograph)."""
    return {kind: fams[int(rng.integers(len(fams)))] for kind, fams in FAMILIES.items()}


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(p[0]), int(p[1])


def draw_lesion(
    rng: np.random.Generator,
    kind: str,
    fam: Family,
    hard: np.ndarray,
    centre_layer: np.ndarray,
    p: np.ndarray,
    s: float,
    ma_radius: tuple[float, float],
) -> None:
    """Draw one lesion of ``kind`` in family ``fam`` at ``p`` into ``hard`` (its 0/1 shape) and, for
    families with a pale centre, ``centre_layer``. ``s`` is the lesion scale in pixels (the
    field-of-view radius times the preset's lesion scale)."""
    k = fam.size
    if kind == "MA":
        r = max(1, int(round(s * k * rng.uniform(*ma_radius))))
        if fam.shape == "oval":
            cv2.ellipse(hard, _pt(p), (r, max(1, int(round(r * 0.6)))), rng.uniform(0, 180), 0, 360, 1, -1)
        elif fam.shape == "pair":
            for _ in range(int(rng.integers(2, 4))):
                cv2.circle(hard, _pt(p + rng.normal(0, 1.6 * r, 2)), r, 1, -1)
        else:
            cv2.circle(hard, _pt(p), r, 1, -1)
        return
    if kind == "HE":
        if fam.shape == "flame":  # long and thin, like a splinter along the nerve-fibre layer
            axes = (max(3, int(s * k * rng.uniform(0.03, 0.06))), max(1, int(s * k * rng.uniform(0.006, 0.012))))
            cv2.ellipse(hard, _pt(p), axes, rng.uniform(0, 180), 0, 360, 1, -1)
        elif fam.shape == "dots":
            for _ in range(int(rng.integers(3, 8))):
                r = max(1, int(s * k * rng.uniform(0.006, 0.012)))
                cv2.circle(hard, _pt(p + rng.normal(0, 0.015 * s * k, 2)), r, 1, -1)
        elif fam.shape == "blotch":  # overlapping ellipses: an irregular outline
            for _ in range(int(rng.integers(2, 5))):
                axes = (max(2, int(s * k * rng.uniform(0.008, 0.02))), max(2, int(s * k * rng.uniform(0.006, 0.016))))
                cv2.ellipse(hard, _pt(p + rng.normal(0, 0.01 * s * k, 2)), axes, rng.uniform(0, 180), 0, 360, 1, -1)
        else:  # blot
            axes = (max(2, int(s * k * rng.uniform(0.012, 0.035))), max(2, int(s * k * rng.uniform(0.01, 0.03))))
            angle = rng.uniform(0, 180)
            cv2.ellipse(hard, _pt(p), axes, angle, 0, 360, 1, -1)
            if fam.centre is not None:
                inner = (max(1, int(axes[0] * 0.4)), max(1, int(axes[1] * 0.4)))
                cv2.ellipse(centre_layer, _pt(p), inner, angle, 0, 360, 1.0, -1)
        return
    if kind == "EX":
        if fam.shape == "plaque":
            for _ in range(int(rng.integers(1, 4))):
                axes = (max(2, int(s * k * rng.uniform(0.01, 0.025))), max(2, int(s * k * rng.uniform(0.008, 0.02))))
                cv2.ellipse(hard, _pt(p + rng.normal(0, 0.012 * s, 2)), axes, rng.uniform(0, 180), 0, 360, 1, -1)
        elif fam.shape == "ring":  # circinate: dots on an ellipse around a leaking centre
            ra, rb, phi = s * rng.uniform(0.03, 0.06), s * rng.uniform(0.025, 0.05), rng.uniform(0, np.pi)
            for t in rng.uniform(0, 2 * np.pi, int(rng.integers(8, 17))):
                q = p + np.array(
                    [
                        ra * np.cos(t) * np.cos(phi) - rb * np.sin(t) * np.sin(phi),
                        ra * np.cos(t) * np.sin(phi) + rb * np.sin(t) * np.cos(phi),
                    ]
                )
                cv2.circle(hard, _pt(q), max(1, int(round(s * k * rng.uniform(0.003, 0.008)))), 1, -1)
        elif fam.shape == "speckle":  # many fine glints spread wide
            for _ in range(int(rng.integers(8, 25))):
                cv2.circle(
                    hard,
                    _pt(p + rng.normal(0, 0.04 * s, 2)),
                    max(1, int(round(s * k * rng.uniform(0.004, 0.008)))),
                    1,
                    -1,
                )
        else:  # cluster (the other presets' exudate)
            for _ in range(int(rng.integers(4, 18))):
                cv2.circle(
                    hard,
                    _pt(p + rng.normal(0, 0.025 * s, 2)),
                    max(1, int(round(s * k * rng.uniform(0.003, 0.011)))),
                    1,
                    -1,
                )
        return
    # SE: a fuzzy ellipse
    axes = (max(2, int(s * k * rng.uniform(0.025, 0.05))), max(2, int(s * k * rng.uniform(0.018, 0.035))))
    cv2.ellipse(hard, _pt(p), axes, rng.uniform(0, 180), 0, 360, 1, -1)


def paint_lesions(
    rng: np.random.Generator,
    img: np.ndarray,
    kind: str,
    fam: Family,
    hard: np.ndarray,
    centre_layer: np.ndarray,
    fov: np.ndarray,
    R: float,
    contrast: float,
) -> np.ndarray:
    """Blend the lesions of one type (``hard``: their 0/1 shapes) into ``img`` in place; returns their mask."""
    shape = hard.astype(np.float32)
    if not shape.any():
        return np.zeros(hard.shape, bool)
    if kind == "SE":  # soft exudates fade out over half their width, as in the other presets
        sigma = max(1.0, 0.012 * R * fam.size)
    else:
        sigma = max(0.5, fam.edge * R)
    soft = cv2.GaussianBlur(shape, (0, 0), sigma)
    if fam.solid:
        layer, mask = np.maximum(soft, shape), hard.astype(bool)
    else:
        layer = soft / max(float(soft.max()), 1e-6)
        mask = layer > 0.3
    if fam.texture > 0:
        h, w = hard.shape
        speckle = _noise(rng, h, w, max(8, int(h / max(2.0, 0.012 * R))))
        layer = layer * np.clip(1 + fam.texture * speckle, 0.2, 1.3)
    mask &= fov
    a = np.clip(fam.opacity * contrast * layer * fov, 0, 1)[..., None]
    img *= 1 - a
    img += np.array(fam.colour, np.float32) * a
    if fam.centre is not None and centre_layer.any():
        c = np.clip(0.9 * cv2.GaussianBlur(centre_layer, (0, 0), max(0.5, 0.004 * R)) * fov, 0, 1)[..., None]
        img *= 1 - c
        img += np.array(fam.centre, np.float32) * c
    return mask


def _noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    small = rng.standard_normal((cells, max(1, round(cells * w / h)))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


# ------------------------------------------------------------------ backgrounds
@dataclass(frozen=True)
class Background:
    """A photograph's backdrop: fundus colour, tessellation strength and field-of-view shape."""

    tint: np.ndarray  # RGB of the fundus
    tessellation: float  # 0: none; up to 1: strong choroidal pattern
    radius: float  # field-of-view radius as a fraction of min(w, h) / 2 (the other presets: 0.97 * 0.97-1.03)
    cut: float  # field of view cut above and below at this fraction of its radius (1: a full circle)


#: fundus colour from a lightly pigmented (orange) to a heavily pigmented (brown) eye
LIGHT_FUNDUS: Colour = (0.98, 0.56, 0.26)
DARK_FUNDUS: Colour = (0.50, 0.19, 0.10)


def draw_background(rng: np.random.Generator) -> Background:
    """Pigmentation, colour cast, tessellation and field-of-view shape of one photograph."""
    pigment = rng.uniform(0, 1)
    tint = (1 - pigment) * np.array(LIGHT_FUNDUS, np.float32) + pigment * np.array(DARK_FUNDUS, np.float32)
    cast = 1 + rng.normal(0, 0.08, 3)  # a colour cast of the camera or the exposure
    tint = (tint * cast).astype(np.float32)
    tessellation = float(rng.uniform(0.3, 1.0)) if rng.random() < 0.5 else 0.0
    radius = 0.97 * float(rng.uniform(0.86, 1.03))
    cut = float(rng.uniform(0.8, 0.95)) if rng.random() < 0.5 else 1.0
    return Background(tint, tessellation, radius, cut)


def tessellation_pattern(rng: np.random.Generator, h: int, w: int, R: float) -> np.ndarray:
    """The choroid showing through a thin retina: a network of lighter vessels around darker spaces;
    returns the darkening factor's shape in [0, 1] (1 in the dark spaces)."""
    n = _noise(rng, h, w, max(6, int(h / (0.16 * R))))
    ridges = np.exp(-((n / 0.25) ** 2))  # thin lines where the noise crosses 0: the choroidal vessels
    return np.clip(1 - ridges, 0, 1)


# ------------------------------------------------------------------ look-alikes
#: for each look-alike: (share of photographs that have it, range of how many at rate 1)
DISTRACTORS: dict[str, tuple[float, tuple[int, int]]] = {
    "drusen": (0.5, (3, 14)),
    "reflex": (0.5, (1, 4)),
    "crossing": (0.6, (2, 8)),
    "pigment": (0.45, (1, 6)),
}


def draw_distractors(
    rng: np.random.Generator,
    img: np.ndarray,
    fov: np.ndarray,
    vessels: np.ndarray,
    centre: tuple[float, float],
    R: float,
    macula: np.ndarray,
    rate: float,
    ma_radius: tuple[float, float],
) -> dict[str, int]:
    """Paint look-alikes that are not lesions into ``img`` (in place): drusen, light reflexes, dark
    dots at vessel crossings and pigment clumps. ``rate`` multiplies how many; the counts drawn do
    not depend on the photograph's grade. Returns how many of each were drawn."""
    h, w = fov.shape
    cx, cy = centre
    counts: dict[str, int] = {}
    vessel_px = np.argwhere(vessels > 0.5)

    def anywhere() -> np.ndarray:
        rad, th = np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
        return np.array([cx + rad * R * np.cos(th), cy + rad * R * np.sin(th)])

    def blend(layer: np.ndarray, colour: Colour, opacity: float) -> None:
        a = np.clip(opacity * layer * fov, 0, 1)[..., None]
        img[:] = img * (1 - a) + np.array(colour, np.float32) * a

    for kind, (share, (lo, hi)) in DISTRACTORS.items():
        present = rng.random() < share
        n = int(round(rng.integers(lo, hi + 1) * rate)) if present else 0
        counts[kind] = n
        if n == 0:
            continue
        layer = np.zeros((h, w), np.float32)
        if kind == "drusen":  # pale yellow round spots, often around the macula
            near_macula = rng.random() < 0.6
            for _ in range(n):
                p = macula + rng.normal(0, 0.2 * R, 2) if near_macula else anywhere()
                cv2.circle(layer, _pt(p), max(1, int(round(R * rng.uniform(0.006, 0.014)))), 1.0, -1)
            layer = cv2.GaussianBlur(layer, (0, 0), max(0.7, 0.004 * R))
            blend(layer / max(float(layer.max()), 1e-6), (0.95, 0.86, 0.56), float(rng.uniform(0.45, 0.75)))
        elif kind == "reflex":  # bright arcs (the sheen of a young retina) and glints
            for _ in range(n):
                p = anywhere()
                axes = (max(3, int(R * rng.uniform(0.1, 0.35))), max(2, int(R * rng.uniform(0.05, 0.2))))
                start = rng.uniform(0, 360)
                cv2.ellipse(
                    layer,
                    _pt(p),
                    axes,
                    rng.uniform(0, 180),
                    start,
                    start + rng.uniform(40, 140),
                    1.0,
                    max(1, int(R * rng.uniform(0.006, 0.015))),
                    cv2.LINE_AA,
                )
                for _ in range(int(rng.integers(0, 4))):
                    cv2.circle(
                        layer, _pt(p + rng.normal(0, 0.08 * R, 2)), max(1, int(R * rng.uniform(0.004, 0.008))), 1.0, -1
                    )
            layer = cv2.GaussianBlur(layer, (0, 0), max(0.8, 0.005 * R))
            blend(layer / max(float(layer.max()), 1e-6), (0.98, 0.96, 0.90), float(rng.uniform(0.3, 0.55)))
        elif kind == "crossing":  # dark dots where vessels cross or kink: the microaneurysm's twin
            if len(vessel_px) == 0:
                continue
            for y, x in vessel_px[rng.integers(len(vessel_px), size=n)]:
                r = max(1, int(round(R * rng.uniform(*ma_radius) * rng.uniform(0.9, 1.4))))
                cv2.circle(layer, (int(x), int(y)), r, 1.0, -1)
            layer = np.maximum(layer, cv2.GaussianBlur(layer, (0, 0), 0.6))
            blend(layer, (0.32, 0.05, 0.06), float(rng.uniform(0.7, 0.9)))
        else:  # pigment clumps: dark brown, irregular
            for _ in range(n):
                p = anywhere()
                for _ in range(int(rng.integers(1, 4))):
                    axes = (max(1, int(R * rng.uniform(0.005, 0.018))), max(1, int(R * rng.uniform(0.004, 0.012))))
                    cv2.ellipse(layer, _pt(p + rng.normal(0, 0.008 * R, 2)), axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
            layer = np.maximum(layer, cv2.GaussianBlur(layer, (0, 0), 0.8))
            blend(layer, (0.16, 0.09, 0.06), float(rng.uniform(0.6, 0.9)))
    return counts
