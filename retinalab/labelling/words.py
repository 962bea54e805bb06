"""What the labelling page says to the person labelling: the question, the two answers, how the round's
patches were chosen and what the heatmap shows. All of it comes from the run's ``config.yaml``, so a run
on another lesion asks about that lesion."""

from __future__ import annotations

from typing import Any

from ..active.heuristics import get_heuristic, score_meaning
from ..datasets.base import STRUCTURE_NAMES


def lesion_name(config: dict[str, Any]) -> str:
    """What a clinician calls the run's lesion (``patches.lesion``: ``EX`` is "hard exudate")."""
    code = str((config.get("patches") or {}).get("lesion") or "EX")
    return STRUCTURE_NAMES.get(code, code)


def question(config: dict[str, Any]) -> str:
    """The page's question: "Is there a hard exudate in this patch?"."""
    name = lesion_name(config)
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"Is there {article} {name} in this patch?"


def answer_words(config: dict[str, Any]) -> list[str]:
    """The answers, by label (0, 1): "no hard exudate", "hard exudate"."""
    name = lesion_name(config)
    return [f"no {name}", name]


def _scored(acquisition: str) -> bool:
    try:
        return get_heuristic(acquisition).scored
    except ValueError:  # a lab's heuristic this process cannot import: it ranks, as most do
        return True


def round_note(config: dict[str, Any], round_: int, count: int) -> str:
    """How round ``round_``'s ``count`` patches were chosen, and, in round 0, why not by the acquisition."""
    acquisition = str(config.get("acquisition") or "egl")
    what, _ = score_meaning(acquisition)
    fov = float((config.get("patches") or {}).get("min_fov_fraction", 0.5))
    where = f"each at least {fov:.0%} inside the field of view"
    if round_ == 0:
        drawn = (
            f"{count} patches drawn at random from the training photographs' grid ({where})"
            if config.get("select", "images") == "patches"
            else f"the grid patches of {config.get('initial_images', 4)} training photographs drawn at random ({where})"
        )
        return (
            f"Round 0: {drawn}. {what[:1].upper() + what[1:]} ranks patches with a model, and no model exists "
            "before the first answers, so round 0 is a random draw (paper 002's initial set). From round 1 on, "
            "the model trained on your answers chooses."
        )
    if not _scored(acquisition):
        return f"Round {round_}: {count} patches drawn at random ({where}): this run is the random baseline."
    if config.get("select", "images") == "patches":
        return f"Round {round_}: the {count} patches with the highest {what} under the model trained on your answers."
    return (
        f"Round {round_}: patches of the photograph(s) with the highest interestingness (the sum of {what} over "
        f"their patches) under the model trained on your answers, the highest {what} first."
    )


def heat_legend(config: dict[str, Any]) -> dict[str, str]:
    """The heatmap legend's words: what bright means and what the colour scale runs over."""
    what, meaning = score_meaning(str(config.get("acquisition") or "egl"))
    return {
        "title": f"Heatmap: {what}",
        "meaning": f"bright = {meaning}",
        "scale": f"dark: the lowest {what} in this photograph; pale yellow: the highest",
    }
