"""Channels-last against the plain NCHW layout for the small convolutional networks, side by side.

The networks of paper 000 at the CPU-sized width (conv-large discriminator / ConvNet and the generator,
width 0.125) and paper 002's LeNet have convolutions of 12-50 channels, where oneDNN's NHWC kernels
beat its NCHW ones (retinalab/models/layout.py). Timed here, one thread, both layouts built from the
same seed and run interleaved (so drifts in machine load hit both alike):

* SSL-GAN step: the discriminator on labelled + unlabelled + generated patches, backward, Adam step,
  then the generator's feature-matching step (the order of PatchSSGANTask.training_step);
* ConvNet step: conv-large on a labelled batch, cross-entropy, backward, Adam step;
* LeNet step: a batch of 32 patches of 32 px, cross-entropy, backward, SGD step (paper 002's update);
* LeNet inference: a pool batch of 256 patches, no gradient (active learning's scoring and testing).

Printed: the median step time of each layout (best of the repeats) and the ratio NCHW / channels-last
(> 1: channels-last is faster). Target: >= 1.2x on the SSL-GAN step, which dominates
benchmarks/label_efficiency.py and benchmarks/ssl_gan_factors.py.

    python benchmarks/memory_format.py [--steps 10] [--repeats 3] [--width 0.125] [--batch 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import machine  # benchmarks/ is on sys.path when a script runs

from retinalab.models import layout
from retinalab.models.convlarge import ConvLarge
from retinalab.models.generator import PatchGenerator
from retinalab.models.lenet import LeNet
from retinalab.tasks.patch_ssgan import feature_matching_loss, supervised_loss, unsupervised_loss


def build(channels_last: bool, width: float, batch: int) -> dict[str, Callable[[], None]]:
    """One step function per workload, its networks built in the given layout (same seed for both)."""
    layout.ENABLED = channels_last
    torch.manual_seed(0)
    d, g = ConvLarge(width=width, dropout_in=0.0, dropout=0.0), PatchGenerator(width=width)
    conv = ConvLarge(width=width, dropout_in=0.0, dropout=0.0)
    lenet = LeNet(in_size=32)
    opt_d, opt_g = torch.optim.Adam(d.parameters(), 3e-4, betas=(0.5, 0.999)), torch.optim.Adam(g.parameters(), 3e-4, betas=(0.5, 0.999))
    opt_c = torch.optim.Adam(conv.parameters(), 3e-4, betas=(0.5, 0.999))
    opt_l = torch.optim.SGD(lenet.parameters(), lr=0.01, momentum=0.9)
    x_l, x_u = torch.rand(batch, 3, 32, 32) * 2 - 1, torch.rand(batch, 3, 32, 32) * 2 - 1
    y = torch.randint(0, 2, (batch,))
    x_s, y_s, pool = torch.rand(32, 3, 32, 32), torch.randint(0, 2, (32,)), torch.rand(256, 3, 32, 32)

    def ssl_gan() -> None:
        with torch.no_grad():
            x_g = g(g.sample_noise(batch))
        logits = d(torch.cat([x_l, x_u, x_g]))
        loss = supervised_loss(logits[:batch], y) + unsupervised_loss(logits[batch : 2 * batch], logits[2 * batch :])
        opt_d.zero_grad()
        loss.backward()
        opt_d.step()
        h = d.features(torch.cat([x_u, g(g.sample_noise(batch))]))
        opt_g.zero_grad()
        feature_matching_loss(h[:batch].detach(), h[batch:]).backward()
        opt_g.step()

    def convnet() -> None:
        opt_c.zero_grad()
        F.cross_entropy(conv(x_l), y).backward()
        opt_c.step()

    def lenet_step() -> None:
        opt_l.zero_grad()
        F.cross_entropy(lenet(x_s), y_s).backward()
        opt_l.step()

    @torch.no_grad()
    def lenet_infer() -> None:
        lenet.eval()
        lenet(pool)

    return {"SSL-GAN step": ssl_gan, "ConvNet step": convnet, "LeNet step (batch 32)": lenet_step, "LeNet inference (256 patches)": lenet_infer}


def timed(step: Callable[[], None], steps: int) -> float:
    """Median seconds per call over ``steps`` calls after one warm-up call."""
    step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="timed calls per workload, layout and repeat")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats (best kept)")
    ap.add_argument("--width", type=float, default=0.125, help="conv-large and generator width (the synthetic configs': 0.125)")
    ap.add_argument("--batch", type=int, default=100, help="labelled (and unlabelled) patches per SSL-GAN / ConvNet step")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the benchmarks' --parallel runs use 1 per process)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    was = layout.ENABLED
    try:
        sides = {False: build(False, a.width, a.batch), True: build(True, a.width, a.batch)}
        best: dict[tuple[str, bool], float] = {}
        for _ in range(a.repeats):
            for name in sides[False]:
                for cl in (False, True):  # interleaved
                    layout.ENABLED = cl  # nhwc() reads it at call time
                    t = timed(sides[cl][name], a.steps)
                    best[name, cl] = min(best.get((name, cl), t), t)
    finally:
        layout.ENABLED = was
    print(f"machine: {machine()}, {a.threads} thread(s)")
    print(f"conv-large and generator at width {a.width}, batch {a.batch}; median of {a.steps} calls, best of {a.repeats} interleaved repeats\n")
    print("| workload | NCHW | channels-last | NCHW / channels-last |")
    print("|---|---|---|---|")
    for name in sides[False]:
        n, c = best[name, False], best[name, True]
        print(f"| {name} | {n * 1000:.1f} ms | {c * 1000:.1f} ms | {n / c:.2f}x |")
    ratio = best["SSL-GAN step", False] / best["SSL-GAN step", True]
    print(f"\nSSL-GAN step, channels-last: {ratio:.2f}x faster (target >= 1.2x): {'met' if ratio >= 1.2 else 'MISSED'}")


if __name__ == "__main__":
    main()
