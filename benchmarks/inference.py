"""Throughput of every network retinalab trains: samples/s for inference and for a training step.

One table per run, all networks measured side by side on the same device: inference (eval mode,
``torch.inference_mode``) and a training step (forward, cross-entropy / BCE backward, SGD step), in
samples (patches or images) per second, with each network's forward FLOPs per sample (counted with
``torch.utils.flop_counter``) and the FLOP rate that gives. On a GPU the rate is also given as a
fraction of the device's datasheet dense peak (bf16 for ``bf16-mixed``, TF32 for fp32, which runs
its matrix products as TF32 under retinalab's ``float32_matmul_precision("high")``), with the device
named; on a CPU no peak is assumed.

Networks at the sizes of their shipped configs: paper 000's conv-large (ConvNet baseline and SSL-GAN
discriminator) and the ResNet34 patch baseline on 32 px patches, the ResNet50 whole-image baseline at
512 px; paper 001's G (Xception U-Net), D (lesion discriminator) and the lesion-attention grader at
512 px; paper 002's LeNet on 48 px patches.

    python benchmarks/inference.py [--device cpu|cuda] [--precision 32|bf16-mixed] [--seconds 2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from _common import machine  # benchmarks/ is on sys.path when a script runs
from torch import nn

from retinalab.models import build_patch_model
from retinalab.models.lenet import LeNet
from retinalab.models.lesion_attention import LesionAttentionGrader
from retinalab.models.lesion_discriminator import LesionDiscriminator
from retinalab.models.xception_unet import build_generator

# datasheet dense peaks in FLOP/s (bf16, TF32), by a substring of torch.cuda.get_device_name()
PEAKS = {
    "H200": (989e12, 494e12),
    "H100 PCIe": (756e12, 378e12),
    "H100": (989e12, 494e12),
    "A100": (312e12, 156e12),
    "L40S": (362e12, 183e12),
    "A10": (125e12, 62.5e12),
    "V100": (125e12, 15.7e12),  # no TF32: fp32 is 15.7
}


class Net:
    """A network, how to call it on a batch, and a loss for its training step."""

    def __init__(
        self, name: str, unit: str, build: Callable[[], nn.Module], shape: tuple[int, ...], call=None, loss=None
    ):
        self.name, self.unit, self.build, self.shape = name, unit, build, shape
        self.call = call or (lambda m, x: m(x))
        self.loss = loss or (lambda out, b: F.cross_entropy(out, torch.zeros(b, dtype=torch.long, device=out.device)))


def _grader(m, x):
    return m(x, torch.rand(x.shape[0], 4, x.shape[2], x.shape[3], device=x.device))["logits"]


NETS = [
    Net("conv-large: ConvNet / SSL-GAN D (paper 000)", "patch", lambda: build_patch_model("convnet", 2), (3, 32, 32)),
    Net("ResNet34 patch baseline (paper 000)", "patch", lambda: build_patch_model("resnet34", 2), (3, 32, 32)),
    Net("LeNet (paper 002)", "patch", lambda: LeNet(2, 48), (3, 48, 48)),
    Net("ResNet50 whole image, 512 px (paper 000)", "image", lambda: build_patch_model("resnet50", 2), (3, 512, 512)),
    Net(
        "G: Xception U-Net, 512 px (paper 001)",
        "image",
        lambda: build_generator("xception", 1.0),
        (3, 512, 512),
        loss=lambda out, b: F.binary_cross_entropy_with_logits(out, torch.zeros_like(out)),
    ),
    Net(
        "D: lesion discriminator, 512 px (paper 001)",
        "image",
        lambda: LesionDiscriminator(3, 4, 1.0),
        (7, 512, 512),
        call=lambda m, x: m(x[:, :3], x[:, 3:]),
        loss=lambda out, b: F.binary_cross_entropy_with_logits(out, torch.zeros_like(out)),
    ),
    Net(
        "lesion-attention grader, ResNet18, 512 px (paper 001)",
        "image",
        lambda: LesionAttentionGrader(5, 4, "resnet18"),
        (3, 512, 512),
        call=_grader,
    ),
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rate(step: Callable[[], None], batch: int, seconds: float, device: torch.device) -> float:
    """Samples per second: one warm-up step, then steps until ``seconds`` have passed (at least 2)."""
    step()
    _sync(device)
    n, start = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - start < seconds:
        step()
        n += 1
        if device.type == "cuda" and n % 5:
            continue
        _sync(device)
    _sync(device)
    return n * batch / (time.perf_counter() - start)


def _n(rate: float) -> str:
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.2f}"


def _flops(net: Net, model: nn.Module, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, *net.shape, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.call(model, x)
    return float(counter.get_total_flops())


def measure(
    net: Net, batch: int, device: torch.device, autocast, seconds: float, train: bool
) -> tuple[float, float, float]:
    """(forward FLOPs per sample, inference samples/s, training-step samples/s or nan)."""
    torch.manual_seed(0)
    model = net.build().to(device).to(memory_format=torch.channels_last)
    flops = _flops(net, model.eval(), device)
    x = torch.rand(batch, *net.shape, device=device).to(memory_format=torch.channels_last)

    def infer() -> None:
        with torch.inference_mode(), autocast():
            net.call(model, x)

    inf = _rate(infer, batch, seconds, device)
    if not train:
        return flops, inf, float("nan")
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = net.loss(net.call(model, x).float(), batch)
        loss.backward()
        opt.step()

    return flops, inf, _rate(step, batch, seconds, device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--precision", choices=["32", "bf16-mixed"], default=None, help="default: bf16-mixed on a GPU, 32 on a CPU"
    )
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement after one warm-up step")
    ap.add_argument("--patch-batch", type=int, default=256)
    ap.add_argument("--image-batch", type=int, default=None, help="default: 16 on a GPU, 2 on a CPU")
    ap.add_argument("--no-train", action="store_true", help="inference only")
    a = ap.parse_args()
    device = torch.device(a.device)
    gpu = device.type == "cuda"
    precision = a.precision or ("bf16-mixed" if gpu else "32")
    image_batch = a.image_batch or (16 if gpu else 2)
    torch.set_float32_matmul_precision("high")
    peak = None
    if gpu:
        name = torch.cuda.get_device_name(device)
        for key, (bf16, tf32) in PEAKS.items():
            if key in name:
                peak = bf16 if precision == "bf16-mixed" else tf32
                break
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16-mixed" else nullcontext
    print(f"machine: {machine()}")
    print(
        f"device {device}, precision {precision}, channels-last, batches of {a.patch_batch} patches / {image_batch} "
        "images, "
        f"{a.seconds:g} s per measurement"
    )
    peak_note = f"; peak {peak / 1e12:.0f} TFLOP/s" if peak else ("; peak unknown for this GPU" if gpu else "")
    print(
        "\n| network | unit | GFLOP / sample | inference / s | training step / s | inference TFLOP/s | training "
        f"TFLOP/s{' | inference % peak | training % peak' if peak else ''} |"
    )
    print(f"|---|---|---|---|---|---|---|{'---|---|' if peak else ''}")
    for net in NETS:
        batch = a.patch_batch if net.unit == "patch" else image_batch
        flops, inf, train = measure(net, batch, device, autocast, a.seconds, not a.no_train)
        row = (
            f"| {net.name} | {net.unit} | {flops / 1e9:.3f} | {_n(inf)} | {_n(train)} "
            f"| {inf * flops / 1e12:.3f} | {3 * train * flops / 1e12:.3f}"
        )
        if peak:
            row += f" | {100 * inf * flops / peak:.1f}% | {100 * 3 * train * flops / peak:.1f}%"
        print(row + " |", flush=True)
    print(f"\ntraining FLOPs are taken as 3x the forward FLOPs (forward + backward){peak_note}")


if __name__ == "__main__":
    main()
