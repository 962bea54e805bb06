"""Paper 001's ablations, CPU-sized (Tables 1 and 3): grading kappa and per-lesion AUC-PR.

A synthetic IDRiD layout (segmentation part with the four lesion masks, grading part with grades) is
written once. For every seed: stage 1a trains G on the pixel-annotated training images, stage 1b the
grading CNN on the graded images (= ``Ori``); stage 2 then starts three times from those two
checkpoints: ``Lesion(Pretrained)`` (G frozen, its masks weighting the grader's features, no attention
module), ``Lesion(Semi)`` (lesion attention, pseudo masks after a warm-up, no D) and ``Lesion(Semi+Adv)``
(the full method). ``Ori`` is the stage-1b grader trained on for as many epochs as stage 2 adds, so
that every grading row has the same grader budget. Batch-norm statistics are recalibrated before each
test (RecalibrateBatchNorm) and grades are drawn balanced. Every model is tested after its last epoch
on the official test splits: quadratic-weighted kappa on the graded test images, pixel AUC-PR per
lesion on the segmentation test images (exact, masks weighted by lesion area).

    python benchmarks/collaborative.py [--work /tmp/collab-bench] [--seeds 0 1 2] [--images 90]
                                       [--device cpu|cuda] [--precision bf16-mixed]
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from _common import machine  # benchmarks/ is on sys.path when a script runs

from retinalab.callbacks import RecalibrateBatchNorm
from retinalab.datamodules import GradingDataModule, SegmentationDataModule
from retinalab.synthetic import write_synthetic
from retinalab.tasks import CollaborativeTask

LESIONS = ("MA", "HE", "EX", "SE")
VARIANTS = {
    "Lesion(Pretrained)": dict(semi=False, adversarial=False, lesion_features="masks"),
    "Lesion(Semi)": dict(semi=True, adversarial=False),
    "Lesion(Semi+Adv)": dict(semi=True, adversarial=True),
}


def fit_test(task: CollaborativeTask, dm: pl.LightningDataModule, epochs: int, out: Path, device: str = "cpu",
             precision: str = "32", resume: Path | None = None) -> tuple[dict[str, float], Path]:
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision=precision, logger=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[RecalibrateBatchNorm(batches=50)],
        default_root_dir=out, num_sanity_val_steps=0, limit_val_batches=0, enable_checkpointing=False,
    )
    trainer.fit(task, dm, ckpt_path=str(resume) if resume else None)  # resume: train on from a checkpoint
    ckpt = out / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    res = trainer.test(task, dm, verbose=False)
    merged: dict[str, float] = {}
    for d in res:
        merged |= {k.split("/dataloader_idx")[0]: float(v) for k, v in d.items()}
    return merged, ckpt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/retinalab-collab-bench")
    ap.add_argument("--images", type=int, default=90, help="synthetic photographs (a third with masks)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--size", type=int, default=128, help="image side fed to the networks")
    ap.add_argument("--epochs-seg", type=int, default=15)
    ap.add_argument("--epochs-grading", type=int, default=15)
    ap.add_argument("--epochs-joint", type=int, default=5)
    ap.add_argument("--width", type=float, default=0.25, help="G and D width multiplier")
    ap.add_argument("--pseudo-warmup-epochs", type=int, default=1, help="stage-2 epochs before the attention maps supervise G")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="train on the CPU or one GPU")
    ap.add_argument("--precision", default=None, help="Lightning precision (default: bf16-mixed on a GPU, 32 on the CPU)")
    a = ap.parse_args()
    precision = a.precision or ("bf16-mixed" if a.device == "cuda" else "32")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(a.work)
    root = work / "IDRiD"
    if not (root / "A. Segmentation").is_dir():
        write_synthetic("idrid", root, a.images, 1234, (512, 340), 1.0, 1.0, os.cpu_count() or 1, True)
    common = dict(image_size=a.size, num_workers=2, batch_size=8, augment=True)
    tiny = dict(generator_width=a.width, discriminator_width=a.width, backbone="resnet18", num_overlays=0)
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in ["G (stage 1a)", "Ori (stage 1b)", "Ori", *VARIANTS]}
    start = time.perf_counter()
    for seed in a.seeds:
        out = work / f"seed{seed}"
        pl.seed_everything(seed, workers=True)
        seg_dm = SegmentationDataModule("idrid", str(root), split_mode="official", val_size=2, seed=seed, split_file=str(out / "seg.json"), **common)
        res, seg_ckpt = fit_test(CollaborativeTask(stage="segmentation", **tiny), seg_dm, a.epochs_seg, out / "seg", a.device, precision)
        rows["G (stage 1a)"].append(res)
        pl.seed_everything(seed, workers=True)
        grad_dm = GradingDataModule("idrid", str(root), split_mode="official", val_size=2, seed=seed, split_file=str(out / "grading.json"),
                                    sampler="balanced", **common)
        res, grad_ckpt = fit_test(CollaborativeTask(stage="grading", **tiny), grad_dm, a.epochs_grading, out / "grading", a.device, precision)
        rows["Ori (stage 1b)"].append(res)
        # Ori at the stage-2 variants' grader budget: the stage-1b grader trained on for epochs_joint more epochs
        pl.seed_everything(seed, workers=True)
        res, _ = fit_test(CollaborativeTask(stage="grading", **tiny), grad_dm, a.epochs_grading + a.epochs_joint, out / "ori", a.device,
                          precision, resume=grad_ckpt)
        rows["Ori"].append(res)
        for name, kw in VARIANTS.items():
            pl.seed_everything(seed, workers=True)
            dm = SegmentationDataModule(
                "idrid", str(root), split_mode="official", val_size=2, seed=seed, image_level_dataset="idrid", image_level_root=str(root),
                image_level_val_size=2, split_file=str(out / "joint.json"), image_level_sampler="balanced", **common,
            )
            warmup = a.pseudo_warmup_epochs * len(grad_dm.train_dataloader()) if kw["semi"] else 0
            task = CollaborativeTask(stage="joint", generator_ckpt=str(seg_ckpt), grader_ckpt=str(grad_ckpt), pseudo_warmup_steps=warmup, **tiny, **kw)
            res, _ = fit_test(task, dm, a.epochs_joint, out / name, a.device, precision)
            rows[name].append(res)
        print(f"seed {seed} done ({time.perf_counter() - start:.0f} s)", flush=True)
    seconds = time.perf_counter() - start

    def cell(name: str, key: str) -> str:
        v = [r[key] for r in rows[name] if key in r and r[key] == r[key]]
        return f"{np.mean(v):.3f} +- {np.std(v):.3f}" if v else "-"

    print(f"\nmachine: {machine()}")
    print(f"data: {a.images} synthetic IDRiD-layout photographs at {a.size} px; G/D width {a.width}, ResNet18 from scratch;")
    print(f"device: {a.device}, precision {precision}")
    print(f"epochs: stage 1a {a.epochs_seg}, stage 1b {a.epochs_grading}, stage 2 {a.epochs_joint}; seeds {a.seeds}; {seconds:.0f} s in all\n")
    print("Grading on the graded test images (Table 1), mean +- std over seeds\n")
    print("| method | kappa | accuracy | referable AUC |")
    print("|---|---|---|---|")
    for name in ["Ori (stage 1b)", "Ori", *VARIANTS]:
        print(f"| {name} | {cell(name, 'test/kappa')} | {cell(name, 'test/acc')} | {cell(name, 'test/referable_auc')} |")
    print("\nLesion segmentation on the pixel-annotated test images (Table 3): pixel AUC-PR\n")
    print("| method | " + " | ".join(LESIONS) + " | mean |")
    print("|---|" + "---|" * (len(LESIONS) + 1))
    for name in ["G (stage 1a)", *VARIANTS]:
        print(f"| {name} | " + " | ".join(cell(name, f"test/{les}/auc_pr") for les in LESIONS) + f" | {cell(name, 'test/mean/auc_pr')} |")


if __name__ == "__main__":
    main()
