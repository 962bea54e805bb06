"""Named settings of the synthetic fundus generator.

``classic`` is the generator as it first shipped (and every test and figure made before presets
existed). Its photographs carry a shortcut a weak patch classifier learns instead of lesions: lesions
lie only inside 0.88 of the field-of-view radius, so the dark rim (vignetting) never holds one and
"bright centre = lesion" pays; and a grade-1 photograph's only lesions, microaneurysms of 0.4-0.8% of
the radius, are about 1.6 px across once a 128 px patch is downsampled to 32 px (paper 000's grid).

``benchmark`` removes those shortcuts (``docs/synthetic.md`` measures each with
:func:`retinalab.synthetic.audit.shortcut_audit`):

* lesions lie anywhere in the field of view (uniform over its area, off the optic disc);
* vignetting strength and exposure vary per photograph, drawn independently of the grade, so neither
  tells a diseased photograph from a healthy one;
* microaneurysms have radii of 1.0-1.8% of the field-of-view radius: about 4 px across on the 256 px
  scale that an 8x8 grid of 32 px patches sees;
* IDRiD's pixel-annotated photographs include mild (grade-1) retinopathy, so the image task is not
  "many lesions or none".

Its lesion opacity (``lesion_contrast`` 1.2) was calibrated against the supervised ceiling only (the
ConvNet with every training image labelled: test image AUROC 0.915 under
``benchmarks/label_efficiency.py``, window 0.85-0.95), never against a semi-supervised method's result.

``collaborative`` is ``benchmark`` in IDRiD's proportions, for paper 001's benchmark: 81 of every
597 photographs are pixel-annotated (IDRiD's 54 + 27 of 516 + 81), and they are drawn from the same
grade mix as the graded photographs (a third healthy), so that a discriminator comparing annotated with
image-level photographs cannot tell them apart by how diseased they look; with 600 photographs the
graded test split holds 104 (IDRiD's 103). Lesions are drawn as in ``benchmark``.

``scarce`` is for the regime paper 000's claim is about, where 10 labelled photographs do not show a
network the lesions' variety (its ConvNet: image AUROC 71.1 at 10 of 149 labelled, 97.8 with all):
``benchmark``'s placement and shortcut controls, plus, per photograph, one of several looks per lesion
type, look-alikes that are not lesions and a varied background (:mod:`retinalab.synthetic.variety`).
Its lesion size (x1.3), opacity (x1.4 over ``benchmark``'s) and number of look-alikes (half of
:data:`~retinalab.synthetic.variety.DISTRACTORS`'s ranges) were calibrated on the ConvNet alone, at the
SSL-GAN's number of steps: test image AUROC 0.684 at 10 labelled photographs (window 0.65-0.78) and
0.944 with every training photograph labelled (>= 0.92); never on a semi-supervised result.

``easy`` is for learning tests: large, high-contrast lesions anywhere in the field of view, no
shortcut; a pipeline that learns anything at all separates it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Placement = Literal["central", "fov"]
Background = Literal["plain", "varied"]

#: grades 0-4 among IDRiD's graded photographs (168, 25, 168, 93, 62 of 516)
IDRID_GRADE_MIX = (0.33, 0.05, 0.32, 0.18, 0.12)


@dataclass(frozen=True)
class SynthPreset:
    """How the generator draws photographs and lesions.

    Attributes:
        name: preset name (``retinalab synth --preset``).
        placement: ``central``: lesion centres within ``0.88`` of the field-of-view radius (classic);
            ``fov``: anywhere in the field of view, uniform over its area, off the optic disc.
        ma_radius: microaneurysm radius range, as a fraction of the field-of-view radius.
        lesion_scale: multiplies every lesion size (on top of ``write_synthetic``'s own factor).
        lesion_contrast: multiplies every lesion opacity (on top of ``write_synthetic``'s own factor).
        vignetting: range of the per-photograph vignetting strength (brightness lost at the rim).
        exposure: range of the per-photograph exposure factor.
        idrid_seg_grades: probabilities of grades 0-4 among IDRiD's pixel-annotated photographs;
            ``None``: the graded photographs' mix (:data:`IDRID_GRADE_MIX`).
        idrid_seg_fraction: share of an IDRiD layout's photographs that are pixel-annotated.
        lesion_families: each lesion type takes one of several looks per photograph
            (:data:`retinalab.synthetic.variety.FAMILIES`) instead of one fixed look.
        distractors: how many look-alikes that are not lesions (drusen, light reflexes, dark dots at
            vessel crossings, pigment clumps) a photograph draws, as a multiple of
            :data:`retinalab.synthetic.variety.DISTRACTORS`'s ranges; 0: none.
        background: ``plain`` (one fundus colour range, a circular field of view) or ``varied``
            (pigmentation, colour cast, tessellation and a circular or cut field of view of varying
            size, per photograph).
    """

    name: str
    placement: Placement = "central"
    ma_radius: tuple[float, float] = (0.004, 0.008)
    lesion_scale: float = 1.0
    lesion_contrast: float = 1.0
    vignetting: tuple[float, float] = (0.55, 0.55)
    exposure: tuple[float, float] = (1.0, 1.0)
    idrid_seg_grades: tuple[float, float, float, float, float] | None = (0.0, 0.0, 0.45, 0.35, 0.2)
    idrid_seg_fraction: float = 1 / 3
    lesion_families: bool = False
    distractors: float = 0.0
    background: Background = "plain"

    def scaled(self, lesion_scale: float = 1.0, lesion_contrast: float = 1.0) -> SynthPreset:
        """This preset with its lesion size and opacity multiplied."""
        if lesion_scale == 1.0 and lesion_contrast == 1.0:
            return self
        return replace(
            self, lesion_scale=self.lesion_scale * lesion_scale, lesion_contrast=self.lesion_contrast * lesion_contrast
        )


PRESETS: dict[str, SynthPreset] = {
    "classic": SynthPreset("classic"),
    "benchmark": SynthPreset(
        "benchmark",
        placement="fov",
        ma_radius=(0.010, 0.018),
        lesion_contrast=1.2,
        vignetting=(0.35, 0.65),
        exposure=(0.85, 1.1),
        idrid_seg_grades=(0.0, 0.2, 0.4, 0.25, 0.15),
    ),
    "easy": SynthPreset(
        "easy",
        placement="fov",
        ma_radius=(0.012, 0.02),
        lesion_scale=2.5,
        lesion_contrast=1.0,
        vignetting=(0.35, 0.65),
        exposure=(0.85, 1.1),
        idrid_seg_grades=(0.0, 0.0, 0.3, 0.4, 0.3),
    ),
}

# the benchmark's photographs in IDRiD's proportions, pixel-annotated ones of the graded ones' grade mix
PRESETS["collaborative"] = replace(
    PRESETS["benchmark"], name="collaborative", idrid_seg_grades=None, idrid_seg_fraction=81 / 597
)
# the benchmark's placement and shortcut controls, with the variety that makes 10 labelled photographs
# scarce; lesion size, opacity and the number of look-alikes calibrated on the ConvNet alone (docs/synthetic.md)
PRESETS["scarce"] = replace(
    PRESETS["benchmark"],
    name="scarce",
    lesion_families=True,
    distractors=0.5,
    background="varied",
    lesion_scale=1.3,
    lesion_contrast=1.2 * 1.4,
)


def get_preset(preset: str | SynthPreset) -> SynthPreset:
    """A preset by name (or the preset itself); unknown names list the choices."""
    if isinstance(preset, SynthPreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]
