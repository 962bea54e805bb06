"""Paper 001's ablations, CPU-sized (Tables 1 and 3): grading kappa and per-lesion AUC-PR, 3 seeds.

Data: a synthetic IDRiD layout drawn with the ``collaborative`` preset: IDRiD's proportions (600
photographs: 54 + 27 pixel-annotated, 415 + 104 graded), the pixel-annotated photographs drawn from the
graded photographs' grade mix (so D cannot tell the two sets apart by how diseased they look), lesions
as the ``benchmark`` preset draws them (no brightness or position shortcut).

For every seed: stage 1a trains G on the pixel-annotated training images, stage 1b the grading CNN on
the graded ones (``Ori (stage 1b)``); stage 2 then starts from those two checkpoints once per arm, each
the stage-2 defaults with an overlay of ``conf/collaborative/overlays/`` (the files users pass with
``--config``): ``Lesion(Pretrained)`` (G frozen, its masks weighting the grader's features, no
attention module), ``Lesion(Semi)`` (lesion attention, pseudo masks after a warm-up, no D),
``Lesion(Semi+Adv)`` (the full method, no overlay) and ``Oracle`` (Lesion(Semi) with the masks the
generator drew for the graded photographs as pseudo masks: the ceiling of the Semi path; issue 31).
``Ori`` is the stage-1b grader trained on for as many steps as stage 2 has batches, so every grading
row has had the same number of grader updates (an attentive step costs about four plain ones: the
grading network runs once per lesion). Budgets are optimiser steps of batch ``--batch-size``, not
epochs; ``--budgets 1 4 12`` repeats stage 2 (and Ori) at 1, 4 and 12 times ``--joint-batches`` with
the attention warm-up ``--pseudo-warmup`` scaled alike (the oracle's true masks need none).

The graded test photographs carry the lesion masks the generator drew (``<root>/_truth``, which no
reader sees): every stage-2 arm is also scored there, per lesion, by the pixel AUC-PR of G's masks, the
attention maps and the pseudo masks (:mod:`retinalab.tasks.pseudo_quality`), which says whether the
pseudo masks are better lesion masks than G's on those photographs, paper 001's premise. Batch-norm statistics
are recalibrated before each test (RecalibrateBatchNorm), grades are drawn balanced, every model is tested after
its last step on the official test splits: quadratic-weighted kappa, accuracy and referable AUC on the 104 graded test
images; exact pixel AUC-PR per lesion on the 27 pixel-annotated ones (masks weighted by lesion area).

Each result is appended to ``<work>/results-<settings>.jsonl`` as soon as it exists; a rerun with the
same settings skips what is there (a killed run loses at most the model in training). The script
prints how large each lesion is at the input size and its share of the pixels (what a G that learned
nothing scores in AUC-PR), and which lesions the supervised G of stage 1a has learned at that size.

    python benchmarks/collaborative.py [--quick] [--budgets 1 4 12] [--arms ...] [--work /tmp/retinalab-collab-bench]
                                       [--seeds 0 1 2] [--parallel 2] [--size 128] [--device cpu|cuda]
                                       [--precision bf16-mixed] [--width 0.25]

``--parallel N`` runs N trainings at a time, each its own process with its share of the cores (or N per
GPU; :mod:`retinalab.experiments.launch`): every seed's stage 1a and 1b first, then all stage-2 runs and ``Ori``,
the longest first; each appends its row as it ends, and a rerun retries what failed (logs in
``<work>/logs``).

The default arms are Table 1's three, ``Oracle`` and ``Oracle, attention from masks, G by L_Seg`` (the
oracle with the Semi path's two defects fixed: ``conf/collaborative/overlays/``); the other variants
with ``--arms``. The default (3 seeds, budgets 1, 4 and 12) is about 27,000 s of training: about 4 hours
with ``--parallel 2`` on 2 cores (docs/benchmarks.md: the 12x budget alone for Table 1's arms and the
oracle is about 110 minutes there, so issue 31's 60 minutes cannot be met at this size).

Paper 001's G and D are channels-last (:mod:`retinalab.models.layout`), which trains to other numbers than
the plain layout (another summation order): such rows get a settings key of their own, and
``RETINALAB_CHANNELS_LAST=0`` reads back, or resumes, rows recorded in the plain layout (all of them
until 2026-12-06).

``--quick`` (``make bench``, about 20 minutes on 2 cores): budget 1 and the three arms of Table 1 (no oracle).

GPU-sized (``docs/benchmarks.md``, issue 17 item 6): ``--device cuda --size 512 --width 1 --source-size 1152 765
--batch-size 16 --workers 8``; each model's result is appended to the results file as soon as it is tested.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import resource
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from _collab_report import PRESET, label, report
from _common import (  # benchmarks/ is on sys.path when a script runs
    append_jsonl,
    read_jsonl,
)

from retinalab.datamodules import GradingDataModule, SegmentationDataModule
from retinalab.experiments.launch import limit_threads, plan_slots
from retinalab.lightning import RecalibrateBatchNorm
from retinalab.models import layout
from retinalab.synthetic import read_settings, write_synthetic
from retinalab.tasks import CollaborativeTask
from retinalab.tasks.pseudo_quality import mask_dependence

OVERLAYS = Path(__file__).resolve().parents[1] / "conf" / "collaborative" / "overlays"
#: stage-2 arm -> the overlays users pass after the stage-2 config (none: its defaults, Lesion(Semi+Adv))
ARMS: dict[str, tuple[str, ...]] = {
    "Lesion(Pretrained)": ("lesion_pretrained.yaml",),
    "Lesion(Semi)": ("lesion_semi.yaml",),
    "Lesion(Semi+Adv)": (),
    "Oracle": ("oracle.yaml",),
    "Oracle(masks)": ("oracle_masks.yaml",),
    "Semi, attention from masks": ("lesion_semi.yaml", "attention_from_masks.yaml"),
    "Oracle, attention from masks": ("oracle.yaml", "attention_from_masks.yaml"),
    "Semi, attention from masks, G by L_Seg": (
        "lesion_semi.yaml",
        "attention_from_masks.yaml",
        "generator_seg_loss_only.yaml",
    ),
    "Oracle, attention from masks, G by L_Seg": (
        "oracle.yaml",
        "attention_from_masks.yaml",
        "generator_seg_loss_only.yaml",
    ),
}
QUICK_ARMS = ["Lesion(Pretrained)", "Lesion(Semi)", "Lesion(Semi+Adv)"]
#: the default: Table 1's arms, the oracle as paper 001's text reads, and the oracle with both defects of the
#: Semi path fixed (the ceiling that meets issue 31's target at x12); the other diagnostic arms with --arms
DEFAULT_ARMS = [*QUICK_ARMS, "Oracle", "Oracle, attention from masks, G by L_Seg"]


def fit_test(
    task: CollaborativeTask,
    dm: pl.LightningDataModule,
    steps: int,
    out: Path,
    a: argparse.Namespace,
    resume: Path | None = None,
) -> tuple[dict[str, float], Path]:
    """Train ``steps`` optimiser steps (from ``resume`` when given), recalibrate the batch-norm
    statistics, save ``out/last.ckpt`` (so the next stage starts from the statistics tested here) and test;
    a stage-2 model is also asked how much its grades depend on G's masks (``diag/*``: :func:`mask_dependence`)."""
    recalibrate = RecalibrateBatchNorm(batches=a.recalibration_batches, on_test=False)
    trainer = pl.Trainer(
        max_steps=steps,
        max_epochs=-1,
        accelerator="gpu" if a.device == "cuda" else "cpu",
        devices=1,
        precision=a.precision,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        enable_checkpointing=False,
        callbacks=[recalibrate],
    )
    trainer.fit(task, dm, ckpt_path=str(resume) if resume else None)
    recalibrate.recalibrate(trainer, task)
    ckpt = out / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    merged: dict[str, float] = {}
    for d in trainer.test(task, dm, verbose=False):
        merged |= {k.split("/dataloader_idx")[0]: float(v) for k, v in d.items()}
    if task.stage == "joint":
        merged |= {f"diag/{k}": v for k, v in mask_dependence(task, dm.test_dataloader()[1]).items()}
    return merged, ckpt


def lesion_stats(dm: SegmentationDataModule) -> dict[str, dict[str, float]]:
    """Per lesion on the pixel-annotated test images at the input size: the median extent of its
    connected components (diameter of the circle of equal area, in input pixels), their number, and the
    lesion's share of the pixels (the AUC-PR of a G that learned nothing)."""
    dm.setup("test")
    ds = dm._ds("test", train=False)  # evaluation images carry mask_fraction (eval_masks="fraction")
    diameters: dict[str, list[float]] = {les: [] for les in dm.lesions}
    area, pixels = dict.fromkeys(dm.lesions, 0.0), 0
    for k in range(len(ds)):
        item = ds[k]
        if item is None:
            continue
        pixels += item["mask_fraction"][0].numel()
        for i, les in enumerate(dm.lesions):
            frac = item["mask_fraction"][i].numpy()
            area[les] += float(frac.sum())
            n, labels = cv2.connectedComponents((frac > 0).astype(np.uint8), connectivity=8)
            if n > 1:
                areas = np.bincount(labels.ravel(), weights=frac.ravel(), minlength=n)[1:]
                diameters[les] += list(2 * np.sqrt(areas / np.pi))
    return {
        les: {
            "extent": float(np.median(d)) if d else float("nan"),
            "components": len(d),
            "share": area[les] / max(pixels, 1),
        }
        for les, d in diameters.items()
    }


def overlay(arm: str) -> tuple[dict, dict]:
    """The model and data arguments of ``arm``'s overlay files, later files winning."""
    model, data = {}, {}
    for name in ARMS[arm]:
        conf = yaml.safe_load((OVERLAYS / name).read_text())
        model |= (conf.get("model") or {}).get("init_args") or {}
        data |= (conf.get("data") or {}).get("init_args") or {}
    return model, data


def settings_key(a: argparse.Namespace, channels_last: bool | None = None) -> str:
    """Everything a result depends on except the seed, the budgets and arms run, and where it is written
    (a budget's or an arm's rows are the same whichever others run beside them). G and D in channels-last
    layout (the default since 2026-12-06, :mod:`retinalab.models.layout`) train to other numbers than in
    the plain layout (the same function, another summation order): their rows get a key of their own, and
    ``RETINALAB_CHANNELS_LAST=0`` keeps the key, and the rows, of the plain layout. ``channels_last``:
    the key under that layout (default: the one the networks are built in, ``layout.ENABLED``)."""
    keep = {
        k: v
        for k, v in sorted(vars(a).items())
        if k not in ("seeds", "work", "budgets", "arms", "quick", "report", "parallel", "one")
    }
    if layout.ENABLED if channels_last is None else channels_last:
        keep["channels_last"] = True
    return hashlib.sha1(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:10]


def layout_hint(a: argparse.Namespace) -> str | None:
    """What to do when the results of these settings were recorded in the other layout of G and D (their
    own settings key, :func:`settings_key`): the line to print, or ``None`` when there are none."""
    was = layout.ENABLED
    other = Path(a.work) / f"results-{settings_key(a, channels_last=not was)}.jsonl"
    n = len(read_rows(other)) if other.is_file() else 0
    if not n:
        return None
    env = "RETINALAB_CHANNELS_LAST=0" if was else "RETINALAB_CHANNELS_LAST=1"
    return (
        f"{other}: {n} results recorded with G and D in the {'plain' if was else 'channels-last'} layout, which have a "
        "settings "
        f"key of their own; run with {env} to read them back or resume them"
    )


def read_rows(path: Path) -> dict[tuple[int, str], dict]:
    return {(r["seed"], r["method"]): r for r in read_jsonl(path)}


def units(seed: int, a: argparse.Namespace) -> list[tuple]:
    """What one seed trains, in order: stage 1a (G) and 1b (the grader), then per budget ``Ori`` and each
    arm; a unit is ``(seed, "G (stage 1a)")``, ``(seed, "Ori (stage 1b)")`` or ``(seed, method, budget)``."""
    return [(seed, "G (stage 1a)"), (seed, "Ori (stage 1b)")] + [
        (seed, m, b) for b in a.budgets for m in ["Ori", *a.arms]
    ]


#: stage-1 unit -> the folder of its checkpoint, which stage 2 starts from
STAGE1 = {"G (stage 1a)": "seg", "Ori (stage 1b)": "grading"}


def seed_folder(seed: int, a: argparse.Namespace) -> Path:
    """Where one seed's runs under these settings (:func:`settings_key`) keep their checkpoints."""
    return Path(a.work) / f"seed{seed}-{settings_key(a)}"


def stage1_checkpoint(seed: int, method: str, a: argparse.Namespace) -> Path:
    """The checkpoint of stage-1 unit ``method`` of ``seed``, which stage 2 starts from."""
    return seed_folder(seed, a) / STAGE1[method] / "last.ckpt"


def unit_name(unit: tuple) -> str:
    """A unit's row name: the stage-1 method, or the stage-2 method with its budget (:func:`label`)."""
    return unit[1] if len(unit) == 2 else label(unit[1], unit[2])


def unit_done(unit: tuple, a: argparse.Namespace, done: dict[tuple[int, str], dict]) -> bool:
    """Whether ``unit``'s row is in ``done`` (for a stage-1 unit, also its checkpoint)."""
    return (unit[0], unit_name(unit)) in done and (
        unit[1] not in STAGE1 or stage1_checkpoint(unit[0], unit[1], a).is_file()
    )


def run_unit(unit: tuple, a: argparse.Namespace, root: Path, results: Path, done: dict[tuple[int, str], dict]) -> None:
    """Train and test one unit of :func:`units` unless it is done (:func:`unit_done`: a stage-1 unit also
    reruns when its checkpoint, which stage 2 starts from, is gone); the row is appended to ``results``."""
    seed, method, budget = (*unit, 1)[:3]
    out = seed_folder(seed, a)
    common = dict(image_size=a.size, num_workers=a.workers, batch_size=a.batch_size, augment=True)
    net = dict(generator_width=a.width, discriminator_width=a.width, backbone="resnet18", num_overlays=0)
    seg_ckpt, grad_ckpt = (stage1_checkpoint(seed, m, a) for m in STAGE1)
    name = unit_name(unit)
    if unit_done(unit, a, done):
        if (
            method in ARMS
            and "diag/grade_change" not in done[(seed, name)]["metrics"]
            and (out / name / "last.ckpt").is_file()
        ):
            backfill(seed, name, done, results, out / name / "last.ckpt", root, common)
        return
    started = time.perf_counter()
    pl.seed_everything(seed, workers=True)
    extra: dict = {}
    grad_dm = GradingDataModule(
        "idrid",
        str(root),
        split_mode="official",
        val_size=2,
        seed=seed,
        split_file=str(out / "grading.json"),
        sampler="balanced",
        **common,
    )
    if method == "G (stage 1a)":
        seg_dm = SegmentationDataModule(
            "idrid", str(root), split_mode="official", val_size=2, seed=seed, split_file=str(out / "seg.json"), **common
        )
        res, _ = fit_test(CollaborativeTask(stage="segmentation", **net), seg_dm, a.steps_seg, out / "seg", a)
    elif method == "Ori (stage 1b)":
        res, _ = fit_test(CollaborativeTask(stage="grading", **net), grad_dm, a.steps_grading, out / "grading", a)
    elif (
        method == "Ori"
    ):  # Ori at the stage-2 arms' grader budget: the stage-1b grader trained on for as many more steps
        res, _ = fit_test(
            CollaborativeTask(stage="grading", **net),
            grad_dm,
            a.steps_grading + a.joint_batches * budget,
            out / name,
            a,
            resume=grad_ckpt,
        )
        extra = {"budget": budget}
    else:
        model_kw, data_kw = overlay(method)
        dm = SegmentationDataModule(
            "idrid",
            str(root),
            split_mode="official",
            val_size=2,
            seed=seed,
            image_level_dataset="idrid",
            image_level_root=str(root),
            image_level_val_size=2,
            split_file=str(out / "joint.json"),
            image_level_sampler="balanced",
            **common,
            **data_kw,
        )
        # the attention warm-up scales with the budget; an overlay that sets it (the oracle: 0) keeps its own
        warmup = model_kw.pop("pseudo_warmup_steps", a.pseudo_warmup * budget)
        task = CollaborativeTask(
            stage="joint",
            generator_ckpt=str(seg_ckpt),
            grader_ckpt=str(grad_ckpt),
            pseudo_warmup_steps=warmup if model_kw.get("semi", True) else 0,
            **net,
            **model_kw,
        )
        # Lightning counts every optimiser's step in manual optimisation: `batches` batches
        res, _ = fit_test(task, dm, a.joint_batches * budget * task.optimizer_steps_per_batch, out / name, a)
        extra = {"budget": budget, "warmup": warmup}
    row = {
        "seed": seed,
        "method": name,
        "metrics": res,
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        **extra,
    }
    append_jsonl(results, row)
    done[(seed, name)] = row
    shown = ", ".join(
        f"{k} {res[key]:.3f}"
        for k, key in (
            ("kappa", "test/kappa"),
            ("mean AUC-PR", "test/mean/auc_pr"),
            ("graded: G", "test/vs_truth/G/mean/auc_pr"),
            ("attention", "test/vs_truth/attention/mean/auc_pr"),
            ("pseudo", "test/vs_truth/pseudo/mean/auc_pr"),
        )
        if key in res
    )
    print(f"  seed {seed} {name}: {shown} ({row['seconds']:.0f} s)", flush=True)


def cost(unit: tuple) -> float:
    """A unit's rough cost in stage-2 batches of Lesion(Pretrained), to start the longest first."""
    if len(unit) == 2:
        return 60.0
    _seed, method, budget = unit
    per_batch = 0.3 if method == "Ori" else 1.0 if method in ("Lesion(Pretrained)", "Oracle(masks)") else 1.6
    return 40 * budget * per_batch + 20


def run_parallel(todo: list[tuple], a: argparse.Namespace, results: Path) -> None:
    """Run ``todo`` as ``a.parallel`` processes of this script's ``--one`` mode (:mod:`retinalab.experiments.launch`),
    each with its share of the cores: first every seed's stage 1, then the stage-2 units, longest first.
    Each child appends its own row to ``results`` as it ends."""
    from retinalab.experiments.launch import Job, run_jobs

    slots = plan_slots(a.parallel, "cuda" if a.device == "cuda" else "cpu")
    argv = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]]
    failed = []
    for phase in ([u for u in todo if len(u) == 2], sorted((u for u in todo if len(u) == 3), key=cost, reverse=True)):
        jobs = [
            Job(
                " ".join(map(str, u)),
                [*argv, "--one", json.dumps(u)],
                Path(a.work)
                / "logs"
                / (f"{u[0]}-{u[1]}".replace(" ", "_") + (f"-x{u[2]}" if len(u) == 3 else "") + ".log"),
            )
            for u in phase
        ]
        if jobs:
            print(
                f"{len(jobs)} runs as {len(slots)} concurrent processes ({slots[0].threads} CPU threads each)",
                flush=True,
            )
            codes = run_jobs(jobs, slots, prefix="  ")
            failed += [name for name, rc in codes.items() if rc]
    if failed:
        raise SystemExit(
            f"{len(failed)} runs failed: {', '.join(failed)} (logs in {Path(a.work) / 'logs'}); rerun to retry them"
        )


def backfill(
    seed: int, name: str, done: dict[tuple[int, str], dict], results: Path, ckpt: Path, root: Path, common: dict
) -> None:
    """Add the mask-dependence diagnostic to a stage-2 row recorded before it existed, from the model the
    row was tested with (its ``last.ckpt``); the updated row is appended (a later line wins)."""
    task = CollaborativeTask.load_from_checkpoint(ckpt, map_location="cpu", generator_ckpt=None, grader_ckpt=None)
    dm = SegmentationDataModule(
        "idrid",
        str(root),
        split_mode="official",
        val_size=2,
        seed=seed,
        image_level_dataset="idrid",
        image_level_root=str(root),
        image_level_val_size=2,
        split_file=str(ckpt.parents[1] / "joint.json"),
        image_level_truth="off",
        **common,
    )
    dm.setup("test")
    row = dict(done[(seed, name)])
    row["metrics"] = row["metrics"] | {
        f"diag/{k}": v for k, v in mask_dependence(task, dm.test_dataloader()[1]).items()
    }
    append_jsonl(results, row)
    done[(seed, name)] = row
    print(
        f"  seed {seed} {name}: mask dependence added ({row['metrics']['diag/grade_change']:.2f} of grades change "
        "without G's masks)",
        flush=True,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The settings of a run; a ``--parallel`` child gets its parent's arguments and the same settings key."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/retinalab-collab-bench")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="budget 1 and the arms of Table 1 only (make bench; about 20 min on 2 cores)",
    )
    ap.add_argument(
        "--budgets",
        type=int,
        nargs="+",
        default=[1, 4, 12],
        help="stage-2 budgets: multiples of --joint-batches and --pseudo-warmup",
    )
    ap.add_argument(
        "--arms",
        nargs="+",
        choices=list(ARMS),
        default=DEFAULT_ARMS,
        help=f"stage-2 arms (default: {', '.join(DEFAULT_ARMS)})",
    )
    ap.add_argument(
        "--report", action="store_true", help="print the report of the results already recorded; train nothing"
    )
    ap.add_argument(
        "--images", type=int, default=600, help="synthetic photographs (IDRiD's proportions: 81 of 597 pixel-annotated)"
    )
    ap.add_argument(
        "--source-size",
        type=int,
        nargs=2,
        default=[768, 510],
        metavar=("W", "H"),
        help="size the photographs are drawn at",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--size", type=int, default=128, help="image side fed to the networks")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps-seg", type=int, default=200, help="stage 1a: G's optimiser steps")
    ap.add_argument("--steps-grading", type=int, default=200, help="stage 1b: the grader's optimiser steps")
    ap.add_argument("--joint-batches", type=int, default=40, help="stage 2 batches (= Ori's extra grader steps)")
    ap.add_argument(
        "--pseudo-warmup", type=int, default=15, help="stage-2 batches before the attention maps supervise G"
    )
    ap.add_argument("--width", type=float, default=0.25, help="G and D width multiplier")
    ap.add_argument(
        "--recalibration-batches",
        type=int,
        default=20,
        help="training batches for the batch-norm statistics before a test",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=2,
        help="data-loader workers (with --parallel at most each process's share of the cores)",
    )
    ap.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="runs at a time, each its own process with its share of the cores (stage 1 first)",
    )
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a --parallel child: the JSON of one unit
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="train on the CPU or one GPU")
    ap.add_argument(
        "--precision", default=None, help="Lightning precision (default: bf16-mixed on a GPU, 32 on the CPU)"
    )
    a = ap.parse_args(argv)
    a.precision = a.precision or ("bf16-mixed" if a.device == "cuda" else "32")
    if a.quick:
        a.budgets, a.arms = [1], QUICK_ARMS
    if (
        a.parallel > 1
    ):  # each process loads with at most its share of the cores (parent and children alike: the key counts workers)
        a.workers = min(a.workers, plan_slots(a.parallel, "cuda" if a.device == "cuda" else "cpu")[0].threads)
    return a


def main() -> None:
    a = parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    if limit_threads() is None:  # a --parallel child keeps to its share ($RETINALAB_THREADS)
        torch.set_num_threads(os.cpu_count() or 1)
    work = Path(a.work)
    root = work / "IDRiD"
    wanted = (PRESET, a.images, list(a.source_size))
    settings = read_settings(root)
    if (
        settings is None
        or (settings["preset"]["name"], settings["num_images"], list(settings["size"])) != wanted
        or "truth" not in settings
    ):  # drawn before the generator kept the graded photographs' masks
        write_synthetic(
            "idrid", root, a.images, 1234, tuple(a.source_size), 1.0, 1.0, os.cpu_count() or 1, True, PRESET
        )
    results = work / f"results-{settings_key(a)}.jsonl"
    rows = read_rows(results)
    if rows:
        print(f"{results}: {len(rows)} results already there; running what is missing", flush=True)
    elif not a.one and (hint := layout_hint(a)):
        print(hint, flush=True)
    start = time.perf_counter()
    if a.one:  # a child of --parallel: one unit, its row appended to the results
        run_unit(tuple(json.loads(a.one)), a, root, results, rows)
        return
    todo = [] if a.report else [u for seed in a.seeds for u in units(seed, a)]
    if a.parallel > 1:
        run_parallel([u for u in todo if not unit_done(u, a, rows)], a, results)
        rows = read_rows(results)
    else:
        for unit in todo:
            run_unit(unit, a, root, results, rows)
            if unit == units(unit[0], a)[-1]:
                print(f"seed {unit[0]} done ({time.perf_counter() - start:.0f} s)", flush=True)
    lesions = lesion_stats(
        SegmentationDataModule(
            "idrid",
            str(root),
            split_mode="official",
            val_size=2,
            image_size=a.size,
            num_workers=0,
            split_file=str(work / f"sizes-{a.size}.json"),
        )
    )
    report(a, rows, lesions, time.perf_counter() - start)
    print(f"\nresults: {results}")


if __name__ == "__main__":
    main()
