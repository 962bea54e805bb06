"""The active learner: paper 002's LeNet under Lightning Fabric (:class:`Learner`), scoring pool patches by
EGL or another acquisition (sharded over DDP ranks), updating it with SGD (paper 002: lr 0.01, batch 32,
the 8 dihedral variants of every labelled patch; Algorithm 1's line 7) and the per-round validation and
test metrics. :func:`sgd_epochs` is the one training loop; the EGL image order
(:mod:`retinalab.active.image_selection`) reuses it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_f1_score,
    binary_recall,
    binary_specificity,
)

from ..models.lenet import LeNet
from .egl import Scope
from .heuristics import acquisition_scores
from .pool import ExudatePatches

if TYPE_CHECKING:
    from .options import RunOptions
    from .state import LoopState


def apply_dihedral(x: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
    """Apply dihedral variant ``variant[i]`` (0-7, as ordered by :func:`dihedral`) to sample ``i``."""
    out = torch.empty_like(x)
    for v in variant.unique().tolist():
        sel = variant == v
        turned = torch.rot90(x[sel], v % 4, dims=(2, 3))  # dihedral()'s order: 4 rotations, then each flipped
        out[sel] = turned.flip(3) if v >= 4 else turned
    return out


def sgd_epochs(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    backward,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    variants: int,
    generator: torch.Generator,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    class_weight: torch.Tensor | None = None,
) -> float:
    """``epochs`` shuffled passes over ``x`` (each sample in ``variants`` dihedral versions: 8 or 1),
    one SGD step per batch of ``batch_size``; under DDP each rank trains on a shard of every batch.
    ``class_weight`` (K) weights the cross-entropy per class. Returns the mean training loss (NaN when
    nothing was trained)."""
    weight = None if class_weight is None else class_weight.to(device)
    model.train()
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(x) * variants, generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size][rank::world]
            if len(batch) == 0:
                continue
            xi, vi = batch // variants, batch % variants
            xb = apply_dihedral(x[xi], vi).to(device)
            loss = F.cross_entropy(model(xb), y[xi].to(device), weight=weight)
            optimizer.zero_grad(set_to_none=True)
            backward(loss)
            optimizer.step()
            losses.append(float(loss.detach()))
    return float(np.mean(losses)) if losses else math.nan


def balanced_weights(y: torch.Tensor, num_classes: int = 2) -> torch.Tensor:
    """Per-class weights ``n / (K_present n_c)`` of labels ``y`` (a class absent from ``y`` gets 0): each
    present class carries the same total weight, and a balanced set gets weights 1."""
    counts = torch.bincount(y.long(), minlength=num_classes).double()
    present = counts > 0
    w = torch.zeros(num_classes, dtype=torch.float64)
    w[present] = len(y) / (int(present.sum()) * counts[present])
    return w.float()


@torch.no_grad()
def evaluate_patches(
    net: torch.nn.Module, pool: ExudatePatches, eval_items: dict[str, np.ndarray], batch_size: int, device: torch.device
) -> dict[str, float]:
    """``<split>/{loss,acc,f1,sensitivity,specificity,auroc}`` of ``net`` on each split's pool items
    (exudate = positive class, threshold 0.5 on the softmax, as paper 002 reports).

    Also the operating point a user would pick on a rare class: ``val/threshold``, the threshold on
    p(exudate) with the largest F-measure on the validation patches (:func:`best_f1_threshold`), and
    ``<split>/f1_tuned`` (with ``sensitivity_tuned`` / ``specificity_tuned`` on the test split): the
    F-measure at that threshold. A model trained on a few percent of exudate patches often ranks them
    well (AUROC) while p(exudate) stays under 0.5 for most of them; the F-measure at 0.5 then reads 0."""
    was_training = net.training
    net.eval()
    out: dict[str, float] = {}
    labels = np.asarray(pool.labels)
    scored: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, items in eval_items.items():
        if not len(items):
            continue
        logits = torch.cat(
            [
                net(pool.tensor(items[s : s + batch_size]).to(device)).float().cpu()
                for s in range(0, len(items), batch_size)
            ]
        )
        y = torch.from_numpy(labels[items].astype(np.int64))
        p = torch.softmax(logits, 1)[:, 1]
        scored[name] = (p, y)
        pred = (p >= 0.5).long()
        out[f"{name}/loss"] = float(F.cross_entropy(logits, y))
        out[f"{name}/acc"] = float(binary_accuracy(pred, y))
        out[f"{name}/f1"] = float(binary_f1_score(pred, y))
        out[f"{name}/sensitivity"] = float(binary_recall(pred, y))
        out[f"{name}/specificity"] = float(binary_specificity(pred, y))
        out[f"{name}/auroc"] = float(binary_auroc(p, y)) if 0 < int(y.sum()) < len(y) else math.nan
    if "val" in scored:
        threshold = best_f1_threshold(*scored["val"])
        out["val/threshold"] = threshold
        for name, (p, y) in scored.items():
            pred = (p >= threshold).long()
            out[f"{name}/f1_tuned"] = float(binary_f1_score(pred, y))
            if name == "test":
                out["test/sensitivity_tuned"] = float(binary_recall(pred, y))
                out["test/specificity_tuned"] = float(binary_specificity(pred, y))
    net.train(was_training)
    return out


def best_f1_threshold(p: torch.Tensor, y: torch.Tensor) -> float:
    """The threshold on scores ``p`` whose prediction ``p >= threshold`` has the largest F-measure on labels
    ``y`` (ties: the highest such threshold, the most specific); 0.5 when ``y`` holds no positive.

    Candidates are the scores themselves (every distinct prediction there is), computed in one sort: at
    the i-th largest score, TP is the positives among the i+1 largest and F = 2 TP / (TP + FP + P)."""
    p, y = p.double().flatten(), y.flatten().long()
    n_pos = int(y.sum())
    if n_pos == 0 or not len(p):
        return 0.5
    order = torch.argsort(p, descending=True, stable=True)
    ps, tp = p[order], torch.cumsum(y[order], 0).double()
    predicted = torch.arange(1, len(p) + 1, dtype=torch.float64)
    last = torch.ones(len(p), dtype=torch.bool)  # only the last position of a run of equal scores is a threshold
    last[:-1] = ps[1:] != ps[:-1]
    f1 = torch.where(last, 2 * tp / (predicted + n_pos), torch.full_like(tp, -1.0))
    return float(ps[int(torch.argmax(f1))])


@torch.no_grad()
def score_items(
    net: torch.nn.Module,
    pool: ExudatePatches,
    items: np.ndarray,
    scope: Scope,
    batch_size: int,
    fabric,
    acquisition: str = "egl",
    mc_samples: int = 20,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Acquisition scores (EGL by default; :mod:`retinalab.active.heuristics`) and p(exudate) of pool
    ``items`` in batches of ``batch_size`` (on the CPU, in ``items``' order); under DDP each rank of
    ``fabric`` scores a shard and the results are gathered. BALD's dropout masks are seeded with ``seed``,
    the batch's position and the rank."""
    items = np.asarray(items)
    world, rank, dev = fabric.world_size, fabric.global_rank, fabric.device
    shard = items[rank::world]
    phis, probs = [], []
    for start in range(0, len(shard), batch_size):
        x = pool.tensor(shard[start : start + batch_size]).to(dev)
        phi, p = acquisition_scores(net, x, acquisition, scope, mc_samples, seed * 1_000_003 + rank * 10_007 + start)
        phis.append(phi.double())
        probs.append(p[:, 1].float())
    phi = torch.cat(phis) if phis else torch.zeros(0, device=dev, dtype=torch.float64)
    prob = torch.cat(probs) if probs else torch.zeros(0, device=dev)
    if world == 1:
        return phi.cpu(), prob.cpu()
    width = math.ceil(len(items) / world)
    pad = torch.zeros(2, width, device=dev, dtype=torch.float64)
    pad[0, : len(phi)], pad[1, : len(prob)] = phi, prob
    gathered = fabric.all_gather(pad)  # world x 2 x width
    out = torch.zeros(2, len(items), dtype=torch.float64)
    for r in range(world):
        out[:, r::world] = gathered[r, :, : len(items[r::world])].cpu()
    return out[0], out[1].float()


class Learner:
    """One run's LeNet and SGD optimiser under Lightning Fabric (one device or DDP), with what the loop asks
    of them: train on the labelled patches, evaluate, score pool patches.

    Args:
        options: the run's options (network, optimiser, Fabric and scoring fields).
        loggers: Fabric's loggers (the run's W&B logger, or none).
    """

    def __init__(self, options: RunOptions, loggers: list) -> None:
        from lightning_fabric import Fabric

        self.options = o = options
        self.fabric = Fabric(
            accelerator=o.accelerator, devices=o.devices, strategy=o.strategy, num_nodes=o.num_nodes, loggers=loggers
        )
        self.fabric.launch()
        self.rank0 = self.fabric.global_rank == 0
        #: patches per scoring batch: the option, else 256 on a CPU and 4096 on a GPU
        self.score_batch_size = o.score_batch_size or (256 if self.fabric.device.type == "cpu" else 4096)
        self.pool: ExudatePatches | None = None
        self.model = self.optimizer = None

    def build(self, pool: ExudatePatches) -> None:
        """The seeded LeNet and its SGD optimiser, set up by Fabric, learning from ``pool``'s patches."""
        o = self.options
        self.pool = pool
        torch.manual_seed(o.seed)
        # LeNet is channels-last (retinalab/models/layout.py): the cached patches are NHWC already
        model = LeNet(2, o.patches.patch_size, 3, tuple(o.conv_channels), o.hidden, o.dropout)
        opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        self.model, self.optimizer = self.fabric.setup(model, opt)

    @property
    def net(self) -> LeNet:
        """The plain LeNet (without the Fabric/DDP wrapper)."""
        return self.model.module if hasattr(self.model, "module") else self.model

    def train(self, state: LoopState, epochs: int, r: int) -> float:
        """``epochs`` passes of round ``r`` over the labelled patches of ``state``; the mean training loss."""
        o = self.options
        items = np.array(sorted(state.labelled), dtype=np.int64)
        if not len(items):
            return math.nan
        x = self.pool.tensor(items)
        y = torch.tensor([state.labelled[int(i)] for i in items])
        return sgd_epochs(
            self.model,
            self.optimizer,
            self.fabric.backward,
            x,
            y,
            epochs=epochs,
            batch_size=o.batch_size,
            variants=8 if o.augment and (r > 0 or o.initial_augment) else 1,
            generator=torch.Generator().manual_seed(o.seed * 100_003 + r),
            device=self.fabric.device,
            rank=self.fabric.global_rank,
            world=self.fabric.world_size,
            class_weight=balanced_weights(y) if o.class_weight == "balanced" else None,
        )

    def evaluate(self, eval_items: dict[str, np.ndarray]) -> dict[str, float]:
        """Validation loss/accuracy and test F-measure, sensitivity, specificity, accuracy, AUROC."""
        return evaluate_patches(self.net, self.pool, eval_items, self.score_batch_size, self.fabric.device)

    def score(self, items: np.ndarray, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The run's acquisition scores and p(exudate) of pool ``items`` (a random run's are EGL's, for its
        heatmaps and interestingness); BALD's dropout masks drawn from ``seed``."""
        o = self.options
        return score_items(
            self.net, self.pool, items, o.scope, self.score_batch_size, self.fabric, o.acquisition, o.mc_samples, seed
        )

    def load(self, path: Path) -> None:
        """The model and optimiser state of the checkpoint at ``path``."""
        saved = torch.load(path, map_location="cpu", weights_only=True)
        self.net.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
