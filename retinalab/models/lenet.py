"""LeNet for 48x48 exudate patches (paper 002, Figure 1; Caffe's LeNet).

Paper 002 trains "the LeNet CNN model described in Figure 1" with Caffe; the figure is not in the
text we have, so this is Caffe's reference LeNet: conv 20@5x5 -> max-pool 2 -> conv 50@5x5 ->
max-pool 2 -> fully connected 500 + ReLU -> fully connected K -> softmax. At 48x48 input the
feature map entering the first fully connected layer is 50 x 9 x 9 = 4050.
"""

from __future__ import annotations

import torch
from torch import nn

from ..utils.errors import ConfigError
from .layout import channels_last, nhwc


class LeNet(nn.Module):
    """Caffe LeNet.

    Args:
        num_classes: K (2: healthy / exudate).
        in_size: input side (48 in paper 002).
        in_channels: input channels.
        conv_channels: the two convolutions' widths (Caffe: 20, 50).
        hidden: width of the first fully connected layer (Caffe: 500).
        dropout: rate of a dropout layer before each fully connected layer (0: none, Caffe's LeNet).
            BALD's Monte-Carlo passes need it (active learning's ``acquisition: bald``).

    Shapes:
        ``forward``: ``B x C x S x S`` -> ``B x K`` logits. ``features``: -> ``B x F`` (flattened conv output).
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_size: int = 48,
        in_channels: int = 3,
        conv_channels: tuple[int, int] = (20, 50),
        hidden: int = 500,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        c1, c2 = conv_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5), nn.MaxPool2d(2), nn.Conv2d(c1, c2, 5), nn.MaxPool2d(2), nn.Flatten()
        )
        side = ((in_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ConfigError(f"in_size={in_size} is too small for LeNet (min 16)")
        self.num_features = c2 * side * side
        if not 0 <= dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        # no parameters: checkpoints of networks with and without dropout have the same keys
        self.drop1, self.drop2 = (
            (nn.Dropout(dropout), nn.Dropout(dropout)) if dropout else (nn.Identity(), nn.Identity())
        )
        self.fc1 = nn.Linear(self.num_features, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)
        channels_last(self)  # faster on the CPU: training 1.21x, inference 1.76x (layout.py)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nhwc(x))

    def fc_stack(self) -> list[tuple[nn.Linear, nn.Module | None]]:
        """The fully connected layers with the activation after each (``None`` = identity).

        EGL's fast path back-propagates through exactly these (paper 002: "down to the first fully
        connected layer")."""
        return [(self.fc1, self.act), (self.fc2, None)]

    #: every dropout layer is in :meth:`head`: BALD's Monte-Carlo passes rerun only the head on features
    #: computed once (retinalab.active.heuristics), a fifth of the network's work per pass at 32 px
    dropout_in_head = True

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """The fully connected layers (with the dropout before each): ``B x F`` features -> ``B x K`` logits."""
        return self.fc2(self.drop2(self.act(self.fc1(self.drop1(features)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
