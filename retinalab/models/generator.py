"""Paper 000's patch generator (Table 4), sized to the discriminator's patch.

Table 4: uniform noise of dimension 100; dense to 6x6x512 with batchnorm + ReLU; 5x5 transposed
convolutions of 256, 128 and 128 channels with batchnorm + ReLU, stride 2; a last weight-normed 5x5
transposed convolution to 3 channels with tanh, stride 2. As printed, that is four upsamplings of a
6x6 grid: 96x96 images, not the 32x32 patches the discriminator (Table 3) takes. retinalab keeps the
layer types and channel widths and chooses the base grid and the number of upsamplings so the output
is exactly ``out_size``: 32 = 4 x 2^3 (4x4x512 base, then 256, 128, 3: Salimans et al.'s CIFAR-10
generator), 64 = 4 x 2^4 (256, 128, 128, 3, Table 4's widths), 96 = 6 x 2^4 (Table 4 as printed).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ..utils.errors import ConfigError
from .layout import channels_last, nhwc


def _plan(out_size: int, base: int | None) -> tuple[int, int]:
    """(base grid, number of stride-2 upsamplings) giving ``out_size``."""
    if base is not None:
        n, s = 0, base
        while s < out_size:
            s, n = s * 2, n + 1
        if s != out_size or n == 0:
            raise ConfigError(f"base {base} cannot reach out_size {out_size} by doubling")
        return base, n
    for b in (4, 6, 3, 5, 7):
        s, n = b, 0
        while s < out_size:
            s, n = s * 2, n + 1
        if s == out_size and n >= 1:
            return b, n
    raise ConfigError(f"out_size {out_size} is not (3..7) x 2^n; choose e.g. 32, 48, 64 or 96")


class PatchGenerator(nn.Module):
    """Noise -> ``3 x out_size x out_size`` patches in [-1, 1].

    Args:
        out_size: side of the generated patch (the discriminator's input size).
        latent_dim: dimension of the uniform noise z ~ U(0, 1) (Table 4: 100).
        base: side of the dense layer's grid (default: 4 where possible, Table 4 prints 6).
        width: multiplier of the 512/256/128 channel widths.
        channels: output channels.

    Shapes:
        ``forward``: ``B x latent_dim`` -> ``B x channels x out_size x out_size``.
    """

    WIDTHS = (256, 128, 128, 128, 128)

    def __init__(
        self, out_size: int = 32, latent_dim: int = 100, base: int | None = None, width: float = 1.0, channels: int = 3
    ) -> None:
        super().__init__()
        self.base, n_up = _plan(out_size, base)
        self.out_size, self.latent_dim = out_size, latent_dim
        c0 = max(1, round(512 * width))
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, c0 * self.base * self.base), nn.BatchNorm1d(c0 * self.base * self.base), nn.ReLU()
        )
        self.c0 = c0
        layers: list[nn.Module] = []
        cin = c0
        for i in range(n_up - 1):
            cout = max(1, round(self.WIDTHS[min(i, len(self.WIDTHS) - 1)] * width))
            layers += [
                nn.ConvTranspose2d(cin, cout, 5, 2, padding=2, output_padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]
            cin = cout
        layers += [weight_norm(nn.ConvTranspose2d(cin, channels, 5, 2, padding=2, output_padding=1), dim=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        channels_last(self)  # as the discriminator (layout.py)

    def sample_noise(self, n: int, device: torch.device | str | None = None) -> torch.Tensor:
        """z ~ U(0, 1)^latent_dim (Table 4: uniform noise)."""
        return torch.rand(n, self.latent_dim, device=device)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(-1, self.c0, self.base, self.base)
        return self.net(nhwc(x))
