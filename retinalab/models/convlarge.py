"""Paper 000's "conv-large" patch discriminator / ConvNet baseline (Table 3).

Input 32x32x3; dropout 0.2; three 3x3 convs of 96 (the third stride 2); dropout 0.5; three 3x3
convs of 192 (the third stride 2); dropout 0.5; two 3x3 convs of 192 with padding 0 and stride 2,
as printed; two NiN (1x1) layers of 192; global average pool; dense to K logits. Weight
normalisation on every layer, leaky ReLU 0.2, weights N(0, 0.05), biases 0.

Table 3 prints "dense 10", the CIFAR-10 head of Salimans et al.; here the head has ``num_classes``
outputs (K = 2: healthy / diseased). At 32x32 input the two padding-0 stride-2 convs reduce 8x8 to
3x3 to 1x1, so the NiN layers see a single position.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm as _weight_norm

from .backbones import register_backbone
from .layout import channels_last, nhwc


def _wn(module: nn.Module, enabled: bool) -> nn.Module:
    # parametrizations.weight_norm (not the old nn.utils.weight_norm, which cannot be deep-copied
    # and so breaks EMA copies and checkpoints)
    return _weight_norm(module) if enabled else module


class ConvLarge(nn.Module):
    """Table 3 of paper 000.

    Args:
        num_classes: K real-class logits.
        width: multiplier of the channel counts (96/192); 1.0 is the paper's network.
        in_channels: input channels.
        weight_norm: weight-normalise every conv and the dense layer.
        leak: leaky-ReLU slope.
        dropout_in: input dropout.
        dropout: dropout between the conv blocks.
        init_std: std of the Gaussian weight initialisation.

    Shapes:
        ``forward``: ``B x C x 32 x 32`` -> ``B x K`` logits;
        ``features``: ``B x C x 32 x 32`` -> ``B x 192*width`` (h(x), pooled after the NiN layers).
    """

    def __init__(
        self,
        num_classes: int = 2,
        width: float = 1.0,
        in_channels: int = 3,
        weight_norm: bool = True,
        leak: float = 0.2,
        dropout_in: float = 0.2,
        dropout: float = 0.5,
        init_std: float = 0.05,
    ) -> None:
        super().__init__()
        c1, c2 = max(1, round(96 * width)), max(1, round(192 * width))

        def conv(cin: int, cout: int, k: int = 3, stride: int = 1, pad: int = 1) -> list[nn.Module]:
            return [_wn(nn.Conv2d(cin, cout, k, stride, pad), weight_norm), nn.LeakyReLU(leak)]

        self.body = nn.Sequential(
            nn.Dropout(dropout_in),
            *conv(in_channels, c1),
            *conv(c1, c1),
            *conv(c1, c1, stride=2),
            nn.Dropout(dropout),
            *conv(c1, c2),
            *conv(c2, c2),
            *conv(c2, c2, stride=2),
            nn.Dropout(dropout),
            *conv(c2, c2, pad=0, stride=2),
            *conv(c2, c2, pad=0, stride=2),
            *conv(c2, c2, k=1, pad=0),
            *conv(c2, c2, k=1, pad=0),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = _wn(nn.Linear(c2, num_classes), weight_norm)
        self.num_features = c2
        self.reset_parameters(init_std)
        channels_last(self)  # faster on the CPU: the SSL-GAN step 1.75x at width 0.125 (layout.py)

    def reset_parameters(self, std: float = 0.05) -> None:
        """Isotropic Gaussian weights (Table 6: mu 0, sigma 0.05), zero biases."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if hasattr(m, "parametrizations"):
                    v = m.parametrizations.weight.original1
                    g = m.parametrizations.weight.original0
                    with torch.no_grad():
                        nn.init.normal_(v, 0.0, std)
                        # g = ||v|| per output unit, so the effective weight starts equal to v
                        g.copy_(v.flatten(1).norm(dim=1).view_as(g))
                else:
                    nn.init.normal_(m.weight, 0.0, std)
                nn.init.zeros_(m.bias)

    @torch.no_grad()
    def data_init(self, x: torch.Tensor, eps: float = 1e-6) -> None:
        """Salimans & Kingma's data-dependent initialisation of the weight-normed layers.

        Runs ``x`` (a batch of real inputs, ideally a few hundred) through the network layer by
        layer; each conv/dense layer gets its scale ``g`` divided by the std of its pre-activations
        and its bias set to ``-mean/std``, so every layer starts with unit-variance, zero-mean
        outputs. Without it, 10 layers initialised with N(0, 0.05) shrink the signal to ~1e-3 and
        the network barely trains.
        Dropout is off during the pass.
        """
        was_training = self.training
        self.eval()
        h = nhwc(x)
        for m in [*self.body, self.head]:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.zeros_(m.bias)
                out = m(h)
                dims = [0, 2, 3] if out.dim() == 4 else [0]
                mean, std = out.mean(dims), out.std(dims) + eps
                if hasattr(m, "parametrizations"):
                    g = m.parametrizations.weight.original0
                    g.div_(std.view_as(g))
                else:
                    m.weight.div_(std.view(-1, *([1] * (m.weight.dim() - 1))))
                m.bias.copy_(-mean / std)
                h = m(h)
            else:
                h = m(h)
        self.train(was_training)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """h(x): the pooled activations after the NiN layers."""
        self._check(x)
        return self.body(nhwc(x))

    #: smallest input side the two padding-0 stride-2 convs accept (32 in the paper)
    MIN_SIZE = 28

    def _check(self, x: torch.Tensor) -> None:
        if min(x.shape[-2:]) < self.MIN_SIZE:
            raise ValueError(
                f"conv-large needs patches of at least {self.MIN_SIZE}x{self.MIN_SIZE} px (paper 000: 32), got "
                f"{tuple(x.shape[-2:])}; set the datamodule's patch_out to 32"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.head(self.body(nhwc(x)))


@register_backbone("convnet", options=("dropout_in", "dropout"))
def convnet(
    num_classes: int, width: float, weights: str | None, dropout_in: float = 0.2, dropout: float = 0.5
) -> nn.Module:
    """Paper 000's conv-large (Table 3) as a patch classifier; it trains from scratch (no ``weights``)."""
    return ConvLarge(num_classes=num_classes, width=width, dropout_in=dropout_in, dropout=dropout)
