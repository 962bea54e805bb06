"""Channels-last memory layout for the convolutional networks retinalab builds itself: conv-large, its
generator, LeNet, and paper 001's mask generator G (Xception U-Net) and lesion discriminator D.

Their convolutions have few channels (12-24 at the CPU-sized width 0.125, 20-50 in LeNet, 16-256 in G and
D at the CPU-sized width 0.25), where oneDNN's NHWC kernels are faster than the NCHW ones for every one
of these networks' training steps, at the CPU-sized and at full width (``benchmarks/memory_format.py``;
the ratios, machines and dates are in docs/benchmarks.md, "Channels-last"). The grading network of paper
001 (timm's ResNet) is left alone: channels-last does not make it faster on a CPU.

The layout changes how tensors sit in memory, not what they mean: shapes, ``state_dict`` keys and
values, checkpoints and results are the same up to floating-point summation order. Both the weights and
the inputs have to be channels-last; converting only one of them gains nothing.

``RETINALAB_CHANNELS_LAST=0`` (read at import) or ``layout.ENABLED = False`` (before the networks are
built) keeps the plain NCHW layout, as before.
"""

from __future__ import annotations

import os

import torch
from torch import nn

#: whether the networks built from now on, and their inputs, use the channels-last layout
ENABLED = os.environ.get("RETINALAB_CHANNELS_LAST", "1").strip().lower() not in ("0", "false", "no", "off")


def channels_last(module: nn.Module) -> nn.Module:
    """``module`` with its 4-d parameters and buffers in channels-last layout (in place; returned)."""
    return module.to(memory_format=torch.channels_last) if ENABLED else module


def nhwc(x: torch.Tensor) -> torch.Tensor:
    """A 4-d batch in channels-last layout (a copy only where it is not already; unchanged inside
    ``torch.func.vmap``, which cannot change a layout: EGL's per-sample reference path)."""
    if not ENABLED or x.dim() != 4:
        return x
    try:
        return x.contiguous(memory_format=torch.channels_last)
    except RuntimeError:  # "NYI: Tensor.clone(memory_format) inside vmap"
        return x
