"""The active-learning loop of paper 002 (Algorithms 1 and 2), resumable after any fault.

One run = one acquisition rule (``egl`` or ``random``) on one seeded patient split:

* round 0 trains the initial model M: with ``select: patches`` on ``initial_batches`` x ``batch_size``
  random labelled patches (paper 002: "initially trained with 5 batches of 32 samples"), with
  ``select: images`` on the ground-truth patches of ``initial_images`` random images (Algorithm 2, mu);
* every later round scores the unlabelled pool with the current M, asks the oracle for the labels of
  the chosen items, adds them (with their 7 dihedral variants) and updates M with SGD;
  Algorithm 1 chooses the ``k`` patches of highest EGL, Algorithm 2 first the image(s) whose patches
  sum to the highest EGL (all their ground-truth patches are added) and then ``k`` patches by
  Algorithm 1; ``random`` draws the same numbers uniformly (same budget, schedule and seeds);
* it stops at ``max_rounds``, at ``max_labels`` labelled patches, when the pool is exhausted, or when
  the monitored validation metric has not improved for ``patience`` rounds (paper 002: "when the
  training and validation errors do not decrease significantly").

State (``out_dir``): after every round ``state.json`` (labelled pool, query history, metrics, stopping
counters) and ``model.pt`` are replaced atomically, in that order of safety: the checkpoint named in
``state.json`` always exists. Oracle answers go to ``answers.json`` as soon as they arrive, so a run
killed inside a round redoes that round (selection is deterministic given the saved model) without
asking the oracle again.
"""

from __future__ import annotations

import csv
import inspect
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning_fabric.loggers import Logger
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_f1_score,
    binary_recall,
    binary_specificity,
)
from tqdm.auto import tqdm

from ..datamodules.splits import split_indices, write_json_atomic
from ..datasets import read_dataset
from ..datasets.base import OnError
from ..models.lenet import LeNet
from .egl import Scope, egl
from .oracle import HumanOracle, LabelFileError, LabelsPending, SimulatedOracle, write_csv_atomic
from .pool import (
    CENTRED,
    EXUDATE,
    GRID,
    HEALTHY,
    ExudatePatchConfig,
    ExudatePatches,
    balance,
    dihedral,
    group_by_image,
)
from .selection import image_interestingness, select_images, select_random, select_top_k

log = logging.getLogger(__name__)

STATE_VERSION = 1
#: config fields that must not change between a run and its resumption
FROZEN = ("dataset", "root", "reader_args", "patches", "acquisition", "select", "pool_kind", "seed", "val_size", "test_size", "scope", "initial_batches", "initial_images", "conv_channels", "hidden")


@dataclass
class LoopState:
    """What survives between rounds (``state.json``)."""

    round: int = -1  # last completed round
    labelled: dict[int, int] = field(default_factory=dict)  # pool item -> label
    labelled_images: list[int] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)  # one row per query
    metrics: list[dict] = field(default_factory=list)  # one row per round
    interestingness: list[dict] = field(default_factory=list)
    best: float | None = None
    rounds_without_improvement: int = 0
    stopped: str | None = None
    checkpoint: str | None = None
    pending: dict | None = None  # queries of a round waiting for a human oracle
    config: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d["labelled"] = {str(k): v for k, v in self.labelled.items()}
        d["version"] = STATE_VERSION
        return d

    @classmethod
    def from_json(cls, d: dict) -> LoopState:
        d = dict(d)
        d.pop("version", None)
        d["labelled"] = {int(k): int(v) for k, v in d["labelled"].items()}
        return cls(**d)


class ActiveLearning:
    """``retinalab active``: EGL (or random) active learning of a LeNet exudate patch classifier.

    Args:
        dataset: reader name (``eophtha``, ``idrid``; the synthetic generator writes both layouts).
        root: dataset folder.
        reader_args: extra reader arguments (e-ophtha: ``parts: [EX]``; IDRiD: ``subsets: [segmentation]``).
        patches: how patches are cut (paper 002: 48x48).
        out_dir: run folder (state, checkpoints, CSVs, plots). Runs of the same study should be
            siblings: ``figure2.png`` in the parent compares all of them.
        acquisition: ``egl`` (Eq. 1 of paper 002) or ``random`` (the baseline).
        select: ``patches`` (Algorithm 1) or ``images`` (Algorithm 2).
        k: patches chosen by Algorithm 1 per round (after the image(s) with ``select: images``).
        images_per_round: images chosen by Algorithm 2 per round.
        initial_batches: the initial model's labelled patches, in batches (Algorithm 1; paper: 5).
        initial_images: mu, the initial images (Algorithm 2; paper Figure 2: 4). Drawn half from images
            with exudates, half without, so that the initial model has seen both classes.
        pool_kind: which patches the oracle labels: ``centred`` (sampled from the ground-truth masks:
            the paper's setting, simulated oracle only) or ``grid`` (the image grid; no mask needed).
        scope: EGL parameter scope (``fc``: down to the first fully connected layer, as in the paper).
        max_rounds / max_labels: budget (rounds after the initial one / labelled patches).
        patience / min_delta / monitor: stop when ``monitor`` has not improved by ``min_delta`` for
            ``patience`` rounds (0 disables).
        lr / momentum / weight_decay / batch_size: SGD (paper: lr 0.01, batch 32; momentum 0.9 and
            weight decay 5e-4 are Caffe's LeNet solver defaults, which the paper used).
        epochs_per_round / initial_epochs: passes over the labelled set per update.
        augment: train on the 8 dihedral variants of every labelled patch.
        conv_channels / hidden: LeNet widths (Caffe: 20, 50 and 500).
        val_size / test_size: patients' share for validation / test (by patient, stratified).
        seed: split, initial set, random selections and training order.
        oracle: ``simulated`` (ground-truth masks) or ``human`` (queries to ``out_dir/queries``).
        track_images: images whose interestingness (sum of EGL) is recorded every round (Figure 3).
        score_batch_size: patches per EGL batch (memory is bounded by one batch); default 256 on a
            CPU and 4096 on a GPU, where smaller batches leave scoring bound by kernel launches.
        cache_dir / num_workers / on_error: patch cache location, build workers, bad-file policy.
        accelerator / devices / strategy / num_nodes: Lightning Fabric; with several devices each rank
            scores a shard of the pool and trains on a shard of every batch (DDP).
        logger: ``"wandb"`` (the shipped configs) = :class:`retinalab.loggers.WandbLogger` under
            ``out_dir/logs/version_<k>``, online with a W&B key and offline otherwise, named
            ``active/<dataset>-<acquisition>-<select>-s<seed>``, grouped by dataset, tagged with the
            acquisition, selection, dataset and seed; or any Lightning logger; ``None``: none.
        progress: show progress bars.
        keep_checkpoints: keep every round's ``model-roundNNN.pt`` (default: only the latest).
    """

    def __init__(
        self,
        dataset: str = "eophtha",
        root: str = "data/e-ophtha",
        reader_args: dict[str, Any] | None = None,
        patches: ExudatePatchConfig = ExudatePatchConfig(),
        out_dir: str = "runs/active/egl",
        acquisition: Literal["egl", "random"] = "egl",
        select: Literal["patches", "images"] = "images",
        k: int = 32,
        images_per_round: int = 1,
        initial_batches: int = 5,
        initial_images: int = 4,
        pool_kind: Literal["centred", "grid"] = "centred",
        scope: Scope = "fc",
        max_rounds: int = 30,
        max_labels: int | None = None,
        patience: int = 0,
        min_delta: float = 1e-3,
        monitor: Literal["val/loss", "val/acc"] = "val/loss",
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        batch_size: int = 32,
        epochs_per_round: int = 1,
        initial_epochs: int = 1,
        augment: bool = True,
        conv_channels: tuple[int, int] = (20, 50),
        hidden: int = 500,
        val_size: float = 0.2,
        test_size: float = 0.2,
        seed: int = 0,
        oracle: Literal["simulated", "human"] = "simulated",
        track_images: int = 4,
        score_batch_size: int | None = None,
        cache_dir: str | None = None,
        num_workers: int = 0,
        on_error: OnError = "raise",
        accelerator: str = "auto",
        devices: int | str = 1,
        strategy: str = "auto",
        num_nodes: int = 1,
        logger: Logger | Literal["wandb"] | None = None,
        progress: bool = True,
        keep_checkpoints: bool = False,
    ) -> None:
        if oracle == "human" and pool_kind == "centred":
            raise ValueError(
                "pool_kind: centred samples patches from the ground-truth masks, which a human-oracle run "
                "does not use; set pool_kind: grid"
            )
        for name, v in (("k", k), ("images_per_round", images_per_round), ("initial_batches", initial_batches), ("initial_images", initial_images), ("max_rounds", max_rounds), ("patience", patience)):
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if score_batch_size is not None and score_batch_size < 1:
            raise ValueError(f"score_batch_size must be a positive number of patches, got {score_batch_size}")
        if select == "images" and images_per_round == 0 and k == 0:
            raise ValueError("select: images with images_per_round 0 and k 0 would never label anything")
        args = {name: value for name, value in locals().items() if name in inspect.signature(ActiveLearning.__init__).parameters and name != "self"}
        self.__dict__.update(args)
        self.config = {name: value for name, value in args.items() if name != "logger"}
        self.config["patches"] = asdict(patches)
        self.config["conv_channels"] = list(conv_channels)
        self.out = Path(out_dir)
        self._round_sigma: dict[int, float] = {}

    # ------------------------------------------------------------------ setup
    def make_wandb_logger(self):
        """The W&B logger of ``logger: wandb`` (online with credentials, offline otherwise; no run is
        started until the first metric): under ``out_dir/logs/version_<k>``, named
        ``active/<dataset>-<acquisition>-<select>-s<seed>``, grouped by dataset, tagged."""
        from ..loggers import WandbLogger

        return WandbLogger(
            save_dir=self.out, project="retinalab", name=f"active/{self.dataset}-{self.acquisition}-{self.select}-s{self.seed}",
            group=f"active/{self.dataset}", tags=["active", self.acquisition, self.select, self.dataset, f"seed_{self.seed}"],
        )

    def _setup(self) -> None:
        from lightning_fabric import Fabric

        if self.logger == "wandb":
            self.logger = self.make_wandb_logger()
            self._own_logger = True
        loggers = [] if self.logger in (None, False) else [self.logger]
        self.fabric = Fabric(accelerator=self.accelerator, devices=self.devices, strategy=self.strategy, num_nodes=self.num_nodes, loggers=loggers)
        self.fabric.launch()
        self.rank0 = self.fabric.global_rank == 0
        if self.score_batch_size is None:
            self.score_batch_size = 256 if self.fabric.device.type == "cpu" else 4096
        if self.oracle == "human" and self.fabric.world_size > 1:
            raise ValueError("a human-oracle run waits for files between rounds: run it on one device (devices: 1)")
        records = read_dataset(self.dataset, self.root, on_error=self.on_error, **(self.reader_args or {}))
        if self.oracle == "simulated":
            unannotated = [r for r in records if self.patches.lesion not in r.masks]
            if unannotated:
                log.info("leaving out %d images without a %s mask (the simulated oracle needs one)", len(unannotated), self.patches.lesion)
            records = [r for r in records if self.patches.lesion in r.masks]
        if not records:
            raise ValueError(f"{self.dataset} at {self.root}: no images with a {self.patches.lesion} mask (check reader_args)")
        build = dict(config=self.patches, cache_dir=self.cache_dir, num_workers=self.num_workers, on_error=self.on_error)
        if self.rank0:
            ExudatePatches.build(records, progress=self.progress, **build)
        self.fabric.barrier()
        self.pool = pool = ExudatePatches.build(records, progress=False, **build)
        labels, kind, image = np.asarray(pool.labels), np.asarray(pool.kind), np.asarray(pool.image)
        n_img = len(pool.images)
        has_ex = np.zeros(n_img, np.int64)
        np.maximum.at(has_ex, image, (labels == EXUDATE).astype(np.int64))
        groups = [img["group"] for img in pool.images]
        self.split = split_indices(groups, self.val_size, self.test_size, self.seed, strata=has_ex.tolist())
        self.has_exudate = has_ex.astype(bool)
        in_split = {name: np.isin(image, ids) for name, ids in self.split.items()}
        centred = kind == CENTRED
        self.eval_items = {
            name: balance(np.flatnonzero(in_split[name] & centred & (labels >= 0)), labels, self.seed + i)
            for i, name in enumerate(("val", "test"))
        }
        pool_kind = CENTRED if self.pool_kind == "centred" else GRID
        pool_items = np.flatnonzero(in_split["train"] & (kind == pool_kind))
        if self.pool_kind == "centred":
            pool_items = balance(pool_items, labels, self.seed + 2)
        self.pool_items = pool_items
        self.items_of_image = group_by_image(pool_items, image, self.split["train"])
        self.grid_of_image = group_by_image(np.flatnonzero(kind == GRID), image, range(n_img))
        rng = np.random.default_rng(self.seed + 3)
        train = np.array(self.split["train"])
        order = [train[~self.has_exudate[train]], train[self.has_exudate[train]]]
        self.tracked = sorted(int(i) for part in order for i in rng.permutation(part)[: math.ceil(self.track_images / 2)])[: self.track_images]
        self.oracle_fn = SimulatedOracle(pool) if self.oracle == "simulated" else HumanOracle(pool, self.out / "queries")
        torch.manual_seed(self.seed)
        # channels-last: the cached patches are NHWC already, and LeNet's convolutions run ~2x faster so
        model = LeNet(2, self.patches.patch_size, 3, tuple(self.conv_channels), self.hidden).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        self.model, self.optimizer = self.fabric.setup(model, opt)
        if self.rank0:
            log.info(
                "pool: %d %s patches of %d training images; val %d / test %d balanced centred patches; split by patient %s",
                len(pool_items), self.pool_kind, len(self.split["train"]), len(self.eval_items["val"]), len(self.eval_items["test"]),
                {k_: len(v) for k_, v in self.split.items()},
            )

    @property
    def net(self) -> LeNet:
        """The plain LeNet (without the Fabric/DDP wrapper)."""
        return self.model.module if hasattr(self.model, "module") else self.model

    # ------------------------------------------------------------------ state
    def _state_path(self) -> Path:
        return self.out / "state.json"

    def _refuse_overwrite(self, resume: bool) -> None:
        if not resume and self._state_path().is_file():
            raise FileExistsError(f"{self.out} already holds an active-learning run (state.json); pass --resume to continue it or choose another out_dir")

    def _load_state(self, resume: bool) -> LoopState:
        path = self._state_path()
        if not path.is_file():
            if resume:
                log.info("%s: no saved state, starting a new run", self.out)
            return LoopState(config=self.config)
        try:
            state = LoopState.from_json(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: unreadable state ({e}); it was not written by this version of retinalab") from e
        changed = [k_ for k_ in FROZEN if json.dumps(state.config.get(k_), sort_keys=True) != json.dumps(self.config.get(k_), sort_keys=True)]
        if changed:
            raise ValueError(f"{path}: the run was started with different {', '.join(changed)}; resume with the same config or choose another out_dir")
        if state.checkpoint:
            ckpt = torch.load(self.out / state.checkpoint, map_location="cpu", weights_only=True)
            self.net.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        return state

    def _answers(self) -> dict[int, dict]:
        path = self.out / "answers.json"
        return {int(k_): v for k_, v in json.loads(path.read_text()).items()} if path.is_file() else {}

    def _save_answers(self, answers: dict[int, dict]) -> None:
        if self.rank0:
            write_json_atomic(self.out / "answers.json", {str(k_): v for k_, v in sorted(answers.items())})

    def _save(self, state: LoopState) -> None:
        heat = self._heatmap_data(state)  # scoring is collective under DDP: every rank takes part
        if self.rank0:
            name = f"model-round{state.round:03d}.pt"
            tmp = self.out / f".{name}.tmp-{os.getpid()}"
            torch.save({"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(), "round": state.round}, tmp)
            os.replace(tmp, self.out / name)
            old = state.checkpoint
            state.checkpoint = name
            write_json_atomic(self._state_path(), state.to_json())
            if old and old != name and not self.keep_checkpoints:
                (self.out / old).unlink(missing_ok=True)
            self._write_outputs(state, heat)
        self.fabric.barrier()

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score(self, items: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """EGL and p(exudate) of pool ``items``; each rank scores a shard and the results are gathered."""
        items = np.asarray(items)
        world, rank = self.fabric.world_size, self.fabric.global_rank
        shard = items[rank::world]
        phis, probs = [], []
        for start in range(0, len(shard), self.score_batch_size):
            x = self.pool.tensor(shard[start : start + self.score_batch_size]).to(self.fabric.device)
            phi, p = egl(self.net, x, self.scope)
            phis.append(phi.float())
            probs.append(p[:, 1].float())
        dev = self.fabric.device
        phi = torch.cat(phis) if phis else torch.zeros(0, device=dev)
        prob = torch.cat(probs) if probs else torch.zeros(0, device=dev)
        if world == 1:
            return phi.cpu(), prob.cpu()
        width = math.ceil(len(items) / world)
        pad = torch.zeros(2, width, device=dev)
        pad[0, : len(phi)], pad[1, : len(prob)] = phi, prob
        gathered = self.fabric.all_gather(pad)  # world x 2 x width
        out = torch.zeros(2, len(items))
        for r in range(world):
            n = len(items[r::world])
            out[:, r::world] = gathered[r, :, :n].cpu()
        return out[0], out[1]

    def _sigma(self, images: list[int]) -> dict[int, float]:
        """Algorithm 2, line 5: interestingness = sum of EGL over each image's grid patches."""
        if not images:
            return {}
        items = np.concatenate([self.grid_of_image[i] for i in images])
        phi, _ = self.score(items)
        return image_interestingness(phi, torch.from_numpy(np.asarray(self.pool.image)[items]))

    # ------------------------------------------------------------------ selection
    def _remaining(self, state: LoopState) -> np.ndarray:
        labelled = np.fromiter(state.labelled, np.int64, len(state.labelled))
        return self.pool_items[~np.isin(self.pool_items, labelled)]

    def _budget(self, state: LoopState, wanted: int) -> int:
        if self.max_labels is None:
            return wanted
        return max(0, min(wanted, self.max_labels - len(state.labelled)))

    def _initial(self, state: LoopState) -> tuple[list[int], list[float], list[int], dict[int, float]]:
        rng = np.random.default_rng(self.seed + 10)
        if self.select == "patches":
            n = self._budget(state, self.initial_batches * self.batch_size)
            items = rng.choice(self.pool_items, size=min(n, len(self.pool_items)), replace=False)
            return sorted(int(i) for i in items), [math.nan] * len(items), [], {}
        train = np.array(self.split["train"])
        pos, neg = train[self.has_exudate[train]], train[~self.has_exudate[train]]
        n_pos = min(len(pos), math.ceil(self.initial_images / 2))
        n_neg = min(len(neg), self.initial_images - n_pos)
        images = sorted(int(i) for i in np.concatenate([rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)]))
        items = [int(i) for img in images for i in self.items_of_image[img]]
        items = items[: self._budget(state, len(items))]
        return items, [math.nan] * len(items), images, {}

    def _choose(self, state: LoopState, r: int) -> tuple[list[int], list[float], list[int], dict[int, float]]:
        """Round ``r``'s queries: (items, their scores, images chosen by Algorithm 2, sigma of the candidates)."""
        remaining = self._remaining(state)
        images: list[int] = []
        sigma: dict[int, float] = {}
        chosen: list[int] = []
        scores: list[float] = []
        if self.select == "images" and self.images_per_round:
            free = np.zeros(len(self.pool.labels), dtype=bool)  # unlabelled pool items: O(1) per lookup
            free[remaining] = True
            done = set(state.labelled_images)
            candidates = [i for i in self.split["train"] if i not in done and free[self.items_of_image[i]].any()]
            if self.acquisition == "egl":
                sigma = self._sigma(candidates)
                images = select_images(torch.tensor([sigma[i] for i in candidates]), torch.tensor(candidates), self.images_per_round)
            else:
                rng = np.random.default_rng(self.seed * 1_000 + r)
                images = sorted(int(i) for i in rng.choice(candidates, size=min(self.images_per_round, len(candidates)), replace=False)) if candidates else []
            for img in images:
                new = [int(i) for i in self.items_of_image[img][free[self.items_of_image[img]]]]
                chosen += new
                scores += [sigma.get(img, math.nan)] * len(new)
            remaining = remaining[~np.isin(remaining, chosen)]
        k = self._budget(state, len(chosen) + self.k) - len(chosen)
        if k < 0:
            chosen, scores = chosen[: len(chosen) + k], scores[: len(scores) + k]
        elif k > 0 and len(remaining):
            if self.acquisition == "egl":
                phi, _ = self.score(remaining)
                top = select_top_k(phi, k)
                chosen += [int(remaining[t]) for t in top]
                scores += [float(phi[t]) for t in top]
            else:
                picked = select_random(len(remaining), k, self.seed * 1_000 + r + 500)
                chosen += [int(remaining[t]) for t in picked]
                scores += [math.nan] * len(picked)
        return chosen, scores, images, sigma

    # ------------------------------------------------------------------ training / evaluation
    def _train(self, state: LoopState, epochs: int, r: int) -> float:
        items = np.array(sorted(state.labelled), dtype=np.int64)
        if not len(items):
            return math.nan
        x = self.pool.tensor(items)
        y = torch.tensor([state.labelled[int(i)] for i in items])
        variants = 8 if self.augment else 1
        world, rank = self.fabric.world_size, self.fabric.global_rank
        gen = torch.Generator().manual_seed(self.seed * 100_003 + r)
        self.model.train()
        losses = []
        for _ in range(epochs):
            order = torch.randperm(len(items) * variants, generator=gen)
            step = self.batch_size
            for start in range(0, len(order), step):
                batch = order[start : start + step]
                batch = batch[rank::world]  # DDP: each rank a shard of the batch
                if len(batch) == 0:
                    continue
                xi, vi = batch // variants, batch % variants
                xb = _apply_dihedral(x[xi], vi).to(self.fabric.device)
                yb = y[xi].to(self.fabric.device)
                loss = F.cross_entropy(self.model(xb), yb)
                self.optimizer.zero_grad(set_to_none=True)
                self.fabric.backward(loss)
                self.optimizer.step()
                losses.append(float(loss.detach()))
        return float(np.mean(losses)) if losses else math.nan

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss/accuracy and test F-measure, sensitivity, specificity, accuracy, AUROC."""
        self.net.eval()
        out: dict[str, float] = {}
        labels = np.asarray(self.pool.labels)
        for name, items in self.eval_items.items():
            if not len(items):
                continue
            logits = torch.cat([self.net(self.pool.tensor(items[s : s + self.score_batch_size]).to(self.fabric.device)).float().cpu() for s in range(0, len(items), self.score_batch_size)])
            y = torch.from_numpy(labels[items].astype(np.int64))
            p = torch.softmax(logits, 1)[:, 1]
            pred = (p >= 0.5).long()
            out[f"{name}/loss"] = float(F.cross_entropy(logits, y))
            out[f"{name}/acc"] = float(binary_accuracy(pred, y))
            out[f"{name}/f1"] = float(binary_f1_score(pred, y))
            out[f"{name}/sensitivity"] = float(binary_recall(pred, y))
            out[f"{name}/specificity"] = float(binary_specificity(pred, y))
            out[f"{name}/auroc"] = float(binary_auroc(p, y)) if 0 < int(y.sum()) < len(y) else math.nan
        self.net.train()
        return out

    # ------------------------------------------------------------------ the loop
    def run(self, resume: bool = False) -> str:
        """Run (or continue) the loop. Returns ``"finished"`` or ``"waiting"`` (a human oracle has queries)."""
        try:
            return self._run(resume)
        finally:
            if getattr(self, "_own_logger", False):
                self.logger.finish()  # the next run in this process starts its own W&B run

    def _run(self, resume: bool) -> str:
        self._refuse_overwrite(resume)  # before the patches are cut (minutes on a real dataset), not after
        self._setup()
        if self.rank0:
            self.out.mkdir(parents=True, exist_ok=True)
        self.fabric.barrier()
        state = self._load_state(resume)
        if state.stopped:
            if self.rank0:
                self._write_outputs(state)
                log.info("%s: the run already stopped (%s); outputs refreshed", self.out, state.stopped)
            return "finished"
        answers = self._answers()
        bar = tqdm(total=self.max_rounds + 1, initial=state.round + 1, desc=f"Active learning ({self.acquisition}, {self.select})", unit="round", disable=not (self.progress and self.rank0))
        try:
            while state.stopped is None:
                r = state.round + 1
                if state.pending and state.pending["round"] == r:
                    items, scores, images, sigma = state.pending["items"], state.pending["scores"], state.pending["images"], {}
                elif r == 0:
                    items, scores, images, sigma = self._initial(state)
                else:
                    items, scores, images, sigma = self._choose(state, r)
                if r > 0 and not items:
                    state.stopped = "pool exhausted" if not len(self._remaining(state)) else "budget reached"
                    break
                try:
                    new = self._ask(items, scores, r, answers)
                except LabelsPending as wait:
                    state.pending = {"round": r, "items": items, "scores": _nan_to_none(scores), "images": images}
                    if self.rank0:
                        write_json_atomic(self._state_path(), state.to_json())
                    log.warning("%s", wait)
                    return "waiting"
                now = time.strftime("%Y-%m-%dT%H:%M:%S")
                for item, score in zip(items, scores, strict=True):
                    img = int(self.pool.image[item])
                    state.history.append({
                        "round": r, "item": int(item), "image_id": self.pool.images[img]["image_id"],
                        "centre_y": int(self.pool.centre[item][0]), "centre_x": int(self.pool.centre[item][1]),
                        "score": None if score is None or (isinstance(score, float) and math.isnan(score)) else float(score),
                        "label": int(new[item]), "time": answers[int(item)]["time"] if int(item) in answers else now,
                    })
                    state.labelled[int(item)] = int(new[item])
                state.labelled_images = sorted(set(state.labelled_images) | set(images))
                state.pending = None
                train_loss = self._train(state, self.initial_epochs if r == 0 else self.epochs_per_round, r)
                metrics = {"round": r, "labels": len(state.labelled), "images": len(state.labelled_images), "train/loss": train_loss, **self.evaluate()}
                metrics["exudate_labels"] = int(sum(state.labelled.values()))
                state.metrics.append(metrics)
                if self.acquisition == "egl" or self.track_images:
                    tracked = self._sigma(self.tracked)
                    state.interestingness += [{"round": r, "labels": len(state.labelled), "image_id": self.pool.images[i]["image_id"], "sigma": s} for i, s in tracked.items()]
                    self._round_sigma = sigma
                    if sigma:
                        best = max(sigma, key=sigma.get)
                        metrics["selected_sigma"] = sigma.get(images[0], math.nan) if images else math.nan
                        metrics["max_sigma"] = sigma[best]
                state.round = r
                state.stopped = self._stop_reason(state, metrics)
                self._save(state)
                self._log(state, metrics)
                bar.update(1)
                bar.set_postfix(labels=len(state.labelled), f1=f"{metrics.get('test/f1', math.nan):.3f}", val_loss=f"{metrics.get('val/loss', math.nan):.3f}")
        finally:
            bar.close()
        self._save(state)
        if self.rank0:
            log.info("%s: stopped after round %d (%s) with %d labelled patches", self.out, state.round, state.stopped, len(state.labelled))
        return "finished"

    def _ask(self, items: list[int], scores: list[float], r: int, answers: dict[int, dict]) -> dict[int, int]:
        """Labels of ``items``: from ``answers.json`` where known, else from the oracle (journalled at once)."""
        known = {i: answers[i]["label"] for i in items if i in answers}
        todo = [i for i in items if i not in answers]
        if todo:
            todo_scores = [s for i, s in zip(items, scores, strict=True) if i not in answers]
            try:
                got = self.oracle_fn(todo, r, todo_scores)  # the simulated oracle answers alike on every rank
            except LabelFileError as e:
                self._journal(getattr(e, "partial", {}), r, answers)
                raise
            self._journal(got, r, answers)
            known.update(got)
        return known

    def _journal(self, got: dict[int, int], r: int, answers: dict[int, dict]) -> None:
        if not got:
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        for i, y in got.items():
            if y not in (HEALTHY, EXUDATE):
                raise ValueError(f"oracle answered {y!r} for item {i}; labels are 0 (healthy) or 1 (exudate)")
            answers[int(i)] = {"label": int(y), "round": r, "time": now}
        self._save_answers(answers)

    def _stop_reason(self, state: LoopState, metrics: dict) -> str | None:
        value = metrics.get(self.monitor, math.nan)
        if not math.isnan(value):
            sign = 1 if self.monitor.endswith("loss") else -1
            if state.best is None or sign * (state.best - value) > self.min_delta:
                state.best, state.rounds_without_improvement = value, 0
            else:
                state.rounds_without_improvement += 1
        if state.round >= self.max_rounds:
            return f"max_rounds ({self.max_rounds}) reached"
        if self.max_labels is not None and len(state.labelled) >= self.max_labels:
            return f"max_labels ({self.max_labels}) reached"
        if not len(self._remaining(state)):
            return "pool exhausted"
        if self.patience and state.rounds_without_improvement >= self.patience:
            return f"{self.monitor} flat for {self.patience} rounds"
        return None

    # ------------------------------------------------------------------ outputs
    def _log(self, state: LoopState, metrics: dict) -> None:
        clean = {k_: float(v) for k_, v in metrics.items() if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))}
        self.fabric.log_dict({f"active/{k_}": v for k_, v in clean.items()}, step=state.round)
        if self.rank0 and self.logger is not None and hasattr(self.logger, "log_image"):
            # one key per plot: W&B shows the images of one key side by side and wants them the same size
            plots = {"curves": self.out / "curves.png", "interestingness": self.out / "interestingness.png", "heatmap": self.out / "heatmaps" / f"round_{state.round:03d}.png"}
            for name, png in plots.items():
                if png.is_file():
                    self.logger.log_image(f"active/{name}", images=[str(png)], step=state.round, caption=[png.stem])

    def _heatmap_data(self, state: LoopState) -> tuple[int, np.ndarray, np.ndarray] | None:
        """EGL over the grid of the image to annotate next: the unlabelled training image with the
        highest interestingness this round (Algorithm 2), else the first tracked unlabelled one."""
        if self.acquisition != "egl" or state.round < 0:
            return None
        done = set(state.labelled_images)
        unlabelled = [i for i in self.split["train"] if i not in done]
        free = set(unlabelled)
        ranked = [i for i in sorted(self._round_sigma, key=lambda i: -self._round_sigma[i]) if i in free]
        ranked += [i for i in self.tracked if i in free] + unlabelled + list(self.split["train"])
        img = int(ranked[0])
        items = self.grid_of_image[img]
        if not len(items):
            return None
        phi, _ = self.score(items)
        return img, items, phi.numpy()

    def _write_outputs(self, state: LoopState, heat: tuple[int, np.ndarray, np.ndarray] | None = None) -> None:
        from .plots import plot_comparison, plot_curves, plot_interestingness, write_heatmap

        if state.metrics:
            keys = list(dict.fromkeys(k_ for row in state.metrics for k_ in row))
            write_csv_atomic(self.out / "metrics.csv", keys, [[row.get(k_, "") for k_ in keys] for row in state.metrics])
        hist_keys = ["round", "item", "image_id", "centre_y", "centre_x", "score", "label", "time"]
        write_csv_atomic(self.out / "queries.csv", hist_keys, [[row.get(k_, "") for k_ in hist_keys] for row in state.history])
        if state.interestingness:
            ik = ["round", "labels", "image_id", "sigma"]
            write_csv_atomic(self.out / "interestingness.csv", ik, [[row[k_] for k_ in ik] for row in state.interestingness])
        write_json_atomic(self.out / "split.json", {k_: [self.pool.images[i]["image_id"] for i in v] for k_, v in self.split.items()})
        if state.metrics:
            initial = state.metrics[0]["labels"]
            plot_curves({self.out.name: state.metrics}, self.out / "curves.png", initial)
            plot_comparison(self.out.parent)
        if state.interestingness:
            plot_interestingness(state.interestingness, self.out / "interestingness.png")
        if heat is not None:
            image_id = self.pool.images[heat[0]]["image_id"]
            title = f"{image_id}: EGL after round {state.round} ({len(state.labelled)} labelled patches)"
            write_heatmap(self.pool, heat[0], heat[1], heat[2], self.out / "heatmaps" / f"round_{state.round:03d}.png", title)


def _apply_dihedral(x: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
    """Apply dihedral variant ``variant[i]`` (0-7, as ordered by :func:`dihedral`) to sample ``i``."""
    out = torch.empty_like(x)
    for v in variant.unique().tolist():
        sel = variant == v
        out[sel] = dihedral(x[sel])[v * int(sel.sum()) : (v + 1) * int(sel.sum())]
    return out


def _nan_to_none(values: list[float]) -> list[float | None]:
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in values]


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a run's ``metrics.csv`` as floats (empty cells become NaN)."""
    with Path(path).open(newline="") as f:
        return [{k_: float(v) if v not in ("", None) else math.nan for k_, v in row.items()} for row in csv.DictReader(f)]
