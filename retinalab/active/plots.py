"""Plots of an active-learning study: paper 002's Figure 2 (F-measure, sensitivity and specificity
against labels used, EGL versus random), Figure 3 (interestingness over training) and the EGL heatmap
over a photograph (where the ophthalmologist should annotate)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..utils.io import save_figure_atomic  # noqa: E402
from .heuristics import HEURISTICS, get_heuristic  # noqa: E402
from .pool import ExudatePatches  # noqa: E402

PANELS = (("test/f1", "F-measure"), ("test/sensitivity", "sensitivity"), ("test/specificity", "specificity"))


def _colour(name: str) -> str | None:
    """The colour of the heuristic whose name a run's folder name holds (the baselines, which draw, first:
    ``random_vs_egl`` is the random arm), from the registry; ``None``: none or no colour."""
    for key, heuristic in sorted(HEURISTICS.items(), key=lambda kv: kv[1].scored):
        if key in name.lower():
            return heuristic.colour
    return None


def plot_curves(
    runs: dict[str, list[dict] | list[list[dict]]], path: str | Path, initial_labels: float | None = None
) -> Path:
    """Figure 2: one panel per test metric against labelled patches, one colour per run.

    Args:
        runs: run name -> metric rows (``labels`` and ``test/...`` keys), or a list of such row lists
            (one per seed): drawn as mean +- std where the seeds share their label counts
            (Algorithm 1), else as one thin line per seed (Algorithm 2 adds images of different sizes).
        path: PNG to write (atomically).
        initial_labels: where the initial model's training ends (the paper's orange line).
    """
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4), sharex=True)
    for ax, (key, title) in zip(axes, PANELS, strict=True):
        for name, rows in sorted(runs.items()):
            seeds = rows if rows and isinstance(rows[0], list) else [rows]
            curves = []
            for seed_rows in seeds:
                pts = [
                    (float(r["labels"]), float(r[key]))
                    for r in seed_rows
                    if r.get(key) is not None and not math.isnan(float(r[key]))
                ]
                if pts:
                    curves.append(np.array(pts))
            if not curves:
                continue
            colour = _colour(name)
            if len(curves) == 1 or any(
                len(c) != len(curves[0]) or not np.array_equal(c[:, 0], curves[0][:, 0]) for c in curves
            ):
                for n, c in enumerate(curves):
                    line = ax.plot(
                        c[:, 0],
                        c[:, 1],
                        marker=".",
                        label=name if n == 0 else None,
                        color=colour,
                        linewidth=1 if len(curves) > 1 else 1.5,
                    )[0]
                    colour = line.get_color()
            else:
                ys = np.stack([c[:, 1] for c in curves])
                mean, std = ys.mean(0), ys.std(0)
                line = ax.plot(
                    curves[0][:, 0], mean, marker=".", label=f"{name} (mean of {len(curves)})", color=colour
                )[0]
                ax.fill_between(curves[0][:, 0], mean - std, mean + std, alpha=0.2, color=line.get_color())
        if initial_labels is not None:
            ax.axvline(initial_labels, color="tab:orange", linestyle="--", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("labelled patches")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    return save_figure_atomic(fig, path)


def plot_comparison(study: str | Path) -> Path | None:
    """Figure 2 for every run under ``study`` (sub-folders with a ``metrics.csv``): ``figure2.png``."""
    from .store import read_metrics

    study = Path(study)
    runs = {p.parent.name: read_metrics(p) for p in sorted(study.glob("*/metrics.csv"))}
    if not runs:
        return None
    initial = min((rows[0]["labels"] for rows in runs.values() if rows), default=None)
    return plot_curves(runs, study / "figure2.png", initial)


def plot_interestingness(rows: list[dict], path: str | Path, acquisition: str = "egl") -> Path:
    """Figure 3: each tracked image's interestingness (sum of the acquisition's scores over its patches;
    EGL in the paper) against labels used."""
    by_image: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        by_image[row["image_id"]].append((float(row["labels"]), float(row["sigma"])))
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for image_id, pts in sorted(by_image.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=image_id)
    ax.set_xlabel("labelled patches")
    ax.set_ylabel(f"interestingness (sum of {acquisition if get_heuristic(acquisition).scored else 'egl'})")
    ax.set_title("Interestingness over training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure_atomic(fig, path)


def egl_map(pool: ExudatePatches, items: np.ndarray, phi: np.ndarray, size: int, blur: bool = True) -> np.ndarray:
    """Spread EGL values over their patches (mean where patches overlap), blurred with a Gaussian of
    half a patch (as paper 000's heatmaps); in units of Phi."""
    cfg = pool.config
    s = size / cfg.image_size
    acc = np.zeros((size, size), np.float32)
    cnt = np.zeros((size, size), np.float32)
    half = cfg.patch_size / 2
    for item, v in zip(items, phi, strict=True):
        cy, cx = pool.centre[item]
        y0, x0 = max(0, round((cy - half) * s)), max(0, round((cx - half) * s))
        y1, x1 = round((cy + half) * s), round((cx + half) * s)
        acc[y0:y1, x0:x1] += float(v)
        cnt[y0:y1, x0:x1] += 1
    heat = np.divide(acc, cnt, out=np.zeros_like(acc), where=cnt > 0)
    if blur:
        heat = cv2.GaussianBlur(heat, (0, 0), max(0.5, cfg.patch_size * s / 2))
    return heat


def write_heatmap(
    pool: ExudatePatches,
    image: int,
    items: np.ndarray,
    phi: np.ndarray,
    path: str | Path,
    title: str | None = None,
    top: int = 5,
    acquisition: str = "egl",
) -> Path:
    """The photograph with its ``top`` highest-EGL patches boxed and ranked, next to its EGL heatmap
    in units of Phi (colour bar): where a label would change the model most."""
    items, phi = np.asarray(items), np.asarray(phi, dtype=np.float64)
    view = pool.view(image)
    size = view.shape[0]
    heat = egl_map(pool, items, phi, size)
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 5.0), gridspec_kw={"width_ratios": [1, 1.08]})
    for ax in axes:
        ax.imshow(view)
        ax.set_axis_off()
    s = size / pool.config.image_size
    side = pool.config.patch_size * s
    for rank, j in enumerate(np.argsort(-phi, kind="stable")[:top], start=1):
        cy, cx = pool.centre[items[j]]
        y0, x0 = cy * s - side / 2, cx * s - side / 2
        axes[0].add_patch(plt.Rectangle((x0, y0), side, side, fill=False, edgecolor="cyan", linewidth=1.5))
        axes[0].text(x0, y0 - 2, str(rank), color="cyan", fontsize=9, fontweight="bold", va="bottom")
    axes[0].set_title(f"top {min(top, len(phi))} patches to label", fontsize=10)
    vmax = max(float(heat.max()), 1e-12)
    im = axes[1].imshow(heat, cmap="jet", alpha=0.45, vmin=0.0, vmax=vmax)
    name, unit = get_heuristic(acquisition).score_name
    axes[1].set_title(name, fontsize=10)
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=im.norm, cmap=im.cmap), ax=axes[1], fraction=0.046, pad=0.02)
    bar.set_label(f"{unit} (blurred mean over patches)")
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure_atomic(fig, path)


def write_run_plots(
    out: Path,
    state,
    pool: ExudatePatches,
    heat: tuple[int, np.ndarray, np.ndarray] | None = None,
    acquisition: str = "egl",
) -> None:
    """A run's ``curves.png``, ``interestingness.png`` and ``heatmaps/round_NNN.png`` (``heat``: the image,
    its grid items and their ``acquisition`` scores), and ``figure2.png`` in its parent folder."""
    if state.metrics:
        plot_curves({out.name: state.metrics}, out / "curves.png", state.metrics[0]["labels"])
        plot_comparison(out.parent)
    if state.interestingness:
        plot_interestingness(state.interestingness, out / "interestingness.png", acquisition)
    if heat is not None:
        image_id = pool.images[heat[0]]["image_id"]
        name = "EGL" if acquisition == "egl" else acquisition
        title = f"{image_id}: {name} after round {state.round} ({len(state.labelled)} labelled patches)"
        write_heatmap(
            pool,
            heat[0],
            heat[1],
            heat[2],
            out / "heatmaps" / f"round_{state.round:03d}.png",
            title,
            acquisition=acquisition,
        )
