"""The multi-lesion mask generator G of paper 001 (section 3.2): a U-shaped encoder-decoder with
Xception modules.

"Together, the encoder and decoder consist of a total of nine feature mapping tuples. Apart from the
first tuple of the encoder, which employs normal convolution operations, the remaining tuples are
designed with the Xception module. Each tuple is composed of two separable convolutions followed by
batch normalization, ReLU activation, max-pooling and a shortcut of 1x1 convolution. [...] In the
decoder part, up-sampling and a skip connection are employed before each tuple. At the end, we add L
convolution layers with Sigmoid activation to generate L different lesion masks."

So: five encoder tuples (the first two ordinary 3x3 convolutions; the other four Xception modules,
each entered through a 2x2 max-pool) and four decoder tuples (up-sampling, concatenation of the
encoder feature map of the same size, an Xception module), then one 1x1 convolution per lesion.
Widths follow U-Net (paper 001: "other hyper-parameter settings are based on [36]"): 64 doubling to
1024 at the bottom, scaled by ``width``. ``block="conv"`` uses two ordinary 3x3 convolutions in every
tuple: the ``CE1`` ablation of paper 001's Table 3 (``CE2`` is the Xception default).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.errors import ConfigError
from .layout import channels_last, nhwc

Block = Literal["xception", "conv"]


class SeparableConv2d(nn.Sequential):
    """Depthwise 3x3 convolution then pointwise 1x1 convolution ("same" padding)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_in, kernel_size, padding=kernel_size // 2, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
        )


class XceptionTuple(nn.Module):
    """Two separable 3x3 convolutions, each with batchnorm and ReLU, plus a 1x1-convolution shortcut."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            SeparableConv2d(c_in, c_out),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            SeparableConv2d(c_out, c_out),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class ConvTuple(nn.Sequential):
    """Two ordinary 3x3 convolutions, each with batchnorm and ReLU (U-Net's double convolution)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class XceptionUNet(nn.Module):
    """Paper 001's multi-lesion mask generator G.

    Args:
        in_channels: image channels.
        num_lesions: L, one output map per lesion (MA, HE, EX, SE).
        width: multiplies U-Net's widths (64, 128, 256, 512, 1024).
        depth: encoder tuples (paper: 5, giving 2 x 5 - 1 = 9 tuples in all).
        block: ``xception`` (paper 001, "CE2") or ``conv`` (ordinary convolutions, "CE1").

    Shapes:
        ``forward``: ``B x 3 x H x W`` -> ``B x L x H x W`` logits (H, W divisible by ``2**(depth-1)``);
        the masks are ``sigmoid(logits)`` (:meth:`predict`). ``features`` returns every tuple's output.
    """

    def __init__(
        self, in_channels: int = 3, num_lesions: int = 4, width: float = 1.0, depth: int = 5, block: Block = "xception"
    ) -> None:
        super().__init__()
        if block not in ("xception", "conv"):
            raise ConfigError(f"block must be 'xception' (CE2) or 'conv' (CE1), got {block!r}")
        if depth < 2:
            raise ConfigError(f"depth must be >= 2, got {depth}")
        make = XceptionTuple if block == "xception" else ConvTuple
        chans = [max(4, round(64 * width * 2**i)) for i in range(depth)]
        self.depth = depth
        self.encoder = nn.ModuleList(
            [ConvTuple(in_channels, chans[0])] + [make(chans[i - 1], chans[i]) for i in range(1, depth)]
        )
        self.decoder = nn.ModuleList([make(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(depth - 1))])
        self.head = nn.Conv2d(chans[0], num_lesions, 1)  # the L per-lesion 1x1 convolutions, stacked
        channels_last(self)  # faster on the CPU (layout.py)

    @property
    def num_tuples(self) -> int:
        return len(self.encoder) + len(self.decoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 2 ** (self.depth - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"input side {tuple(x.shape[-2:])} must be divisible by {factor} (depth {self.depth})")
        skips, x = [], nhwc(x)
        for i, enc in enumerate(self.encoder):
            x = enc(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for dec, skip in zip(self.decoder, reversed(skips[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = dec(torch.cat([x, skip], 1))
        return self.head(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Lesion probability maps (sigmoid of :meth:`forward`)."""
        return torch.sigmoid(self(x))


def build_generator(
    block: Block = "xception",
    width: float = 1.0,
    depth: int = 5,
    encoder: str | None = None,
    num_lesions: int = 4,
    prior: float | None = None,
    weights: str | None = None,
) -> nn.Module:
    """G: paper 001's Xception U-Net, or with ``encoder`` a segmentation-models-pytorch U-Net on that
    encoder (``resnet34``, ``tu-efficientnet_b0``, ... any smp/timm encoder name), from scratch unless
    ``weights`` names the encoder's pretrained weights (smp's tag, e.g. ``imagenet``: fetched from the
    Hugging Face hub into its cache, read offline afterwards; the input is then normalised with their
    mean and std inside G). Both map ``B x 3 x H x W`` to ``B x L x H x W`` logits.

    ``prior``: the lesion probability G starts out predicting everywhere: the bias of its last 1x1
    convolution is set to ``log(prior / (1 - prior))`` (the prior initialisation of Lin et al. 2017,
    for rare foreground). ``None`` keeps PyTorch's default (logits near 0: probability 0.5).

    Raises:
        ValueError: for an encoder smp does not know (its message lists how to find the names), or a
            prior outside (0, 1).
    """
    if prior is not None and not 0 < prior < 1:
        raise ConfigError(f"prior must be in (0, 1), got {prior}")
    if weights and encoder is None:
        raise ConfigError(
            "generator weights are for an smp encoder (generator_encoder); paper 001's Xception U-Net trains from "
            "scratch"
        )
    if encoder is None:
        net: nn.Module = XceptionUNet(3, num_lesions, width, depth, block)
        head = net.head
    else:
        from ..weights import smp_unet

        net = smp_unet(encoder, weights, num_lesions)
        head = net.segmentation_head[0]
    if prior is not None:
        nn.init.constant_(head.bias, math.log(prior / (1 - prior)))
    return net
