"""Lightning's overhead on the patch SSL-GAN's training step, against a hand-written PyTorch loop.

Both sides run the same PatchSSGANTask networks, losses and optimisers on the same in-memory
batches (100 labelled + 100 unlabelled 3x32x32 patches, as paper 000's Table 6): the plain loop does
the discriminator step, the EMA update and the generator step by hand (freezing the other network's
parameters as Lightning's toggle_optimizer does); the Lightning side is `Trainer.fit` with logging
every step, no validation, no checkpointing and no progress bar. A step's time runs from its start to
the next step's start (batch fetch and hooks included); the median over the steps after two warm-up
steps, the best of the repeats, measured side by side (interleaved) in one run.

    python benchmarks/lightning_overhead.py [--steps 40] [--width 0.5] [--batch 100]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import pytorch_lightning as pl
import torch
from _common import machine  # benchmarks/ is on sys.path when a script runs
from pytorch_lightning.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset

from retinalab.tasks import PatchSSGANTask
from retinalab.tasks.patch_ssgan import feature_matching_loss, supervised_loss, unsupervised_loss


class Patches(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 3, 32, 32, generator=g)
        self.y = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": self.y[i]}


def loaders(steps: int, batch: int) -> tuple[DataLoader, DataLoader]:
    lab = DataLoader(Patches(batch * steps, 0), batch_size=batch, shuffle=False)
    unl = DataLoader(Patches(batch * steps, 1), batch_size=batch, shuffle=False)
    return lab, unl


def plain_loop(task: PatchSSGANTask, steps: int, batch: int) -> float:
    opt_d = torch.optim.Adam(task.discriminator.parameters(), lr=3e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(task.generator.parameters(), lr=3e-4, betas=(0.5, 0.999))
    lab, unl = loaders(steps, batch)
    task.train()
    starts = []
    for bl, bu in zip(lab, unl, strict=True):
        starts.append(time.perf_counter())
        x_l, y, x_u = task._prepare(bl["image"]), bl["label"], task._prepare(bu["image"])
        n_l, n_u = len(x_l), len(x_u)
        with torch.no_grad():
            x_g = task.generator(task.generator.sample_noise(n_u, x_u.device))
        logits = task.discriminator(torch.cat([x_l, x_u, x_g]))
        loss_d = supervised_loss(logits[:n_l], y) + unsupervised_loss(logits[n_l : n_l + n_u], logits[n_l + n_u :])
        for p in task.generator.parameters():
            p.requires_grad_(False)
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        for p in task.generator.parameters():
            p.requires_grad_(True)
        task.ema.update_parameters(task.discriminator)
        for p in task.discriminator.parameters():
            p.requires_grad_(False)
        x_g = task.generator(task.generator.sample_noise(n_u, x_u.device))
        h = task.discriminator.features(torch.cat([x_u, x_g]))
        loss_g = feature_matching_loss(h[:n_u].detach(), h[n_u:])
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        for p in task.discriminator.parameters():
            p.requires_grad_(True)
        float(loss_d)  # what logging a loss costs: one host sync per step, as Lightning does
    starts.append(time.perf_counter())
    return step_time(starts)


def step_time(starts: list[float]) -> float:
    """Median time from one step's start to the next (batch fetch and every hook included), after
    two warm-up steps; the median is robust to the occasional hiccup of a shared machine."""
    return statistics.median(b - a for a, b in zip(starts[2:], starts[3:], strict=False))


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.starts.append(time.perf_counter())


def lightning_loop(task: PatchSSGANTask, steps: int, batch: int) -> float:
    lab, unl = loaders(steps, batch)
    timer = StepTimer()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
        log_every_n_steps=1,
    )
    trainer.fit(task, train_dataloaders=CombinedLoader({"labeled": lab, "unlabeled": unl}, mode="max_size_cycle"))
    return step_time(timer.starts)


def fresh(width: float, seed: int = 0) -> PatchSSGANTask:
    torch.manual_seed(seed)
    task = PatchSSGANTask(width=width, gen_width=width, data_init=True)
    x = torch.rand(200, 3, 32, 32)
    task._maybe_data_init(task._prepare(x))
    return task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    plain, light = [], []
    for r in range(a.repeats):  # interleaved, so drifts in machine load hit both sides alike
        plain.append(plain_loop(fresh(a.width, r), a.steps, a.batch))
        light.append(lightning_loop(fresh(a.width, r), a.steps, a.batch))
    p, lt = min(plain), min(light)
    print(f"machine: {machine()}, lightning {pl.__version__}")
    print(
        f"SSL-GAN step: {a.batch} labelled + {a.batch} unlabelled 3x32x32 patches, conv-large width {a.width}; "
        f"median of {a.steps - 2} steps after 2 warm-up steps, best of {a.repeats} interleaved repeats\n"
    )
    print("| loop | ms / step |")
    print("|---|---|")
    print(f"| hand-written PyTorch | {p * 1000:.1f} |")
    print(f"| Lightning Trainer.fit | {lt * 1000:.1f} |")
    print(f"\nLightning overhead: {100 * (lt / p - 1):+.1f}% (target <= 10%)")


if __name__ == "__main__":
    main()
