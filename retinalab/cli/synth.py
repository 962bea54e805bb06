"""``retinalab synth``: write a synthetic dataset in the layout of idrid, eophtha, eyepacs, messidor or the
generic folder."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..lightning.cli import parse_size
from ..utils.errors import ArgumentParser

DESCRIPTION = "write a synthetic dataset in the layout of idrid, eophtha, eyepacs, messidor or the generic folder"


def main(argv: Sequence[str]) -> int:
    """``retinalab synth``: see :func:`retinalab.synthetic.write_synthetic`."""
    from ..synthetic import PRESETS, WRITERS, write_synthetic

    p = ArgumentParser(prog="retinalab synth", description=DESCRIPTION)
    p.add_argument("dataset", choices=sorted(WRITERS), help="layout to write")
    p.add_argument("--out", required=True, help="destination folder (must not exist or be empty)")
    p.add_argument("--num-images", type=int, default=60, help="number of photographs (default 60)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same images (default 0)")
    p.add_argument("--size", type=parse_size, default=(1024, 680), help="WxH of each photograph (default 1024x680)")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="classic",
        help="generator settings: classic (default; lesions only in the central 0.88 of the field of view, "
        "so position and brightness hint at them), benchmark (no such shortcut, lesion opacity calibrated "
        "on the supervised ceiling: for comparing methods), collaborative (benchmark in IDRiD's proportions, "
        "pixel-annotated photographs of the graded ones' grade mix: paper 001's benchmark), scarce (benchmark "
        "with several looks per lesion type, look-alikes that are not lesions and varied backgrounds: "
        "the regime where 10 labelled photographs are scarce), easy (large, high-contrast lesions: "
        "learning tests); see docs/synthetic.md",
    )
    p.add_argument("--lesion-scale", type=float, default=1.0, help="multiplies the preset's lesion sizes (default 1)")
    p.add_argument(
        "--lesion-contrast", type=float, default=1.0, help="multiplies the preset's lesion opacity (default 1)"
    )
    p.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="parallel processes (output does not depend on it)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    a = p.parse_args(list(argv))
    out = write_synthetic(
        a.dataset,
        a.out,
        a.num_images,
        a.seed,
        a.size,
        a.lesion_scale,
        a.lesion_contrast,
        a.workers,
        a.overwrite,
        a.preset,
    )
    print(f"wrote a synthetic {a.dataset} dataset of {a.num_images} images ({a.preset} preset) to {out}")
    return 0
