"""What a synthetic dataset keeps beside its published layout: the settings it was drawn with and the
lesion masks of the photographs its layout labels per image only (the truth no real dataset has).

Reading them is the data layer's work (the datamodules measure pseudo masks against them);
:mod:`retinalab.synthetic` writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

#: written at the root of every synthetic dataset: the arguments and preset it was drawn with
SETTINGS_FILE = "synthetic.json"
#: where ``write_synthetic`` keeps the lesion masks of the photographs the layout labels per image only
#: (IDRiD's grading part, e-ophtha's healthy folders, EyePACS, Messidor, the folder layout's unmasked
#: images): the truth no real dataset has, for measuring pseudo masks. No reader looks inside it.
TRUTH_DIR = "_truth"


def read_settings(root: str | Path) -> dict | None:
    """The settings a synthetic dataset at ``root`` was drawn with (``None`` if it has none)."""
    path = Path(root) / SETTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def truth_stem(root: str | Path, image: str | Path) -> Path:
    """Where the drawn masks of photograph ``image`` (under ``root``) go: ``<root>/_truth/<image path
    without suffix>``, to which ``_<structure>.png`` is appended."""
    root, image = Path(root), Path(image)
    return root / TRUTH_DIR / image.relative_to(root).with_suffix("")


def truth_masks(root: str | Path, image: str | Path) -> dict[str, Path]:
    """The drawn masks of photograph ``image`` of the synthetic dataset at ``root`` kept under
    :data:`TRUTH_DIR` (structure -> PNG; empty when the photograph has none or has published masks)."""
    stem = truth_stem(root, image)
    return {p.stem[len(stem.name) + 1 :]: p for p in sorted(stem.parent.glob(f"{stem.name}_*.png"))}


def truth_folder(root: str | Path) -> Path | None:
    """The folder of drawn masks of the synthetic dataset at ``root`` (``None`` when ``root`` is not a
    synthetic dataset, or was drawn before the generator kept them)."""
    settings = read_settings(root)
    folder = (settings or {}).get("truth", {}).get("folder")
    path = Path(root) / folder if folder else None
    return path if path is not None and path.is_dir() else None
