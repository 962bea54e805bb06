"""Channels-last against the plain NCHW layout for the small convolutional networks and paper 001's G and D, side
by side.

The networks of paper 000 at the CPU-sized width (conv-large discriminator / ConvNet and the generator,
width 0.125), paper 002's LeNet and paper 001's G and D at width 0.25 have convolutions of 12-256
channels, where oneDNN's NHWC kernels beat its NCHW ones (retinalab/models/layout.py). Timed here, one
thread, both layouts built from the same seed and run interleaved (so drifts in machine load hit both
alike):

* SSL-GAN step: the discriminator on labelled + unlabelled + generated patches, backward, Adam step,
  then the generator's feature-matching step (the order of PatchSSGANTask.training_step);
* ConvNet step: conv-large on a labelled batch, cross-entropy, backward, Adam step;
* LeNet step: a batch of 32 patches of 32 px, cross-entropy, backward, SGD step (paper 002's update);
* LeNet inference: a pool batch of 256 patches, no gradient (active learning's scoring and testing);
* paper 001's G step: the Xception U-Net at the CPU-sized width 0.25 on a batch of 8 pixel-annotated and
  one of 8 graded photographs at 128 px (two calls, as CollaborativeTask's joint stage makes them; set
  by ``--unet-width``, ``--unet-batch`` and ``--size``), BCE on both outputs, backward, Adam step;
* paper 001's D step: the lesion discriminator (width 0.25) on both batches with their masks, backward,
  Adam step.

The joint stage's grading network (timm's ResNet18) is not converted: channels-last does not make it
faster on this CPU (an attentive forward and backward of batch 8 took 1.13 s channels-last against 1.09 s
in the plain layout, measured while these workloads were added), so it keeps the plain layout.

Printed: the median step time of each layout (best of the repeats) and the ratio NCHW / channels-last
(> 1: channels-last is faster). Target: >= 1.2x on the SSL-GAN step, which dominates
benchmarks/label_efficiency.py and benchmarks/ssl_gan_factors.py.

    python benchmarks/memory_format.py [--steps 10] [--repeats 3] [--width 0.125] [--batch 100] [--threads 1]
                                       [--unet-width 0.25] [--size 128] [--unet-batch 8]

paper 001's networks at full width and size: ``--unet-width 1 --size 512 --unet-batch 1 --steps 3 --repeats 1``.
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
from retinalab.models.lesion_discriminator import LesionDiscriminator
from retinalab.models.xception_unet import build_generator
from retinalab.tasks.patch_ssgan import feature_matching_loss, supervised_loss, unsupervised_loss


def build(
    channels_last: bool, width: float, batch: int, unet_width: float = 0.25, size: int = 128, unet_batch: int = 8
) -> dict[str, Callable[[], None]]:
    """One step function per workload, its networks built in the given layout (same seed for both)."""
    layout.ENABLED = channels_last
    torch.manual_seed(0)
    d, g = ConvLarge(width=width, dropout_in=0.0, dropout=0.0), PatchGenerator(width=width)
    conv = ConvLarge(width=width, dropout_in=0.0, dropout=0.0)
    lenet = LeNet(in_size=32)
    gen, disc = build_generator("xception", unet_width, 5, None, 4, 0.01), LesionDiscriminator(3, 4, unet_width)
    opt_gen, opt_disc = (torch.optim.Adam(n.parameters(), 2e-4, betas=(0.5, 0.999)) for n in (gen, disc))
    x_p, x_i = torch.rand(unet_batch, 3, size, size), torch.rand(unet_batch, 3, size, size)
    masks = (torch.rand(unet_batch, 4, size, size) < 0.05).float()
    opt_d, opt_g = (
        torch.optim.Adam(d.parameters(), 3e-4, betas=(0.5, 0.999)),
        torch.optim.Adam(g.parameters(), 3e-4, betas=(0.5, 0.999)),
    )
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

    def g_step() -> None:
        opt_gen.zero_grad()
        (
            F.binary_cross_entropy_with_logits(gen(x_p), masks) + F.binary_cross_entropy_with_logits(gen(x_i), masks)
        ).backward()
        opt_gen.step()

    m_p, m_i = torch.rand(unet_batch, 4, size, size), torch.rand(unet_batch, 4, size, size)

    def d_step() -> None:
        opt_disc.zero_grad()
        real, fake = disc(x_p, m_p), disc(x_i, m_i)
        (
            F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        ).backward()
        opt_disc.step()

    return {
        "SSL-GAN step": ssl_gan,
        "ConvNet step": convnet,
        "LeNet step (batch 32)": lenet_step,
        "LeNet inference (256 patches)": lenet_infer,
        f"paper 001 G step (2 x {unet_batch} at {size} px)": g_step,
        f"paper 001 D step (2 x {unet_batch} at {size} px)": d_step,
    }


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
    ap.add_argument(
        "--width", type=float, default=0.125, help="conv-large and generator width (the synthetic configs': 0.125)"
    )
    ap.add_argument(
        "--batch", type=int, default=100, help="labelled (and unlabelled) patches per SSL-GAN / ConvNet step"
    )
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (the benchmarks' --parallel runs use 1 per process)"
    )
    ap.add_argument(
        "--unet-width", type=float, default=0.25, help="paper 001's G and D width (benchmarks/collaborative.py's: 0.25)"
    )
    ap.add_argument("--size", type=int, default=128, help="paper 001's input side (benchmarks/collaborative.py's: 128)")
    ap.add_argument(
        "--unet-batch",
        type=int,
        default=8,
        help="paper 001's batches: pixel-annotated and graded alike (the benchmark's: 8)",
    )
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    was = layout.ENABLED
    try:
        sides = {cl: build(cl, a.width, a.batch, a.unet_width, a.size, a.unet_batch) for cl in (False, True)}
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
    print(
        f"conv-large and generator at width {a.width}, batch {a.batch}; paper 001's G and D at width {a.unet_width}; "
        f"median of {a.steps} calls, best of {a.repeats} interleaved repeats\n"
    )
    print("| workload | NCHW | channels-last | NCHW / channels-last |")
    print("|---|---|---|---|")
    for name in sides[False]:
        n, c = best[name, False], best[name, True]
        print(f"| {name} | {n * 1000:.1f} ms | {c * 1000:.1f} ms | {n / c:.2f}x |")
    ratio = best["SSL-GAN step", False] / best["SSL-GAN step", True]
    print(f"\nSSL-GAN step, channels-last: {ratio:.2f}x faster (target >= 1.2x): {'met' if ratio >= 1.2 else 'MISSED'}")


if __name__ == "__main__":
    main()
