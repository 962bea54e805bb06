"""The multi-lesion discriminator D of paper 001 (section 3.2).

"The predicted multi-lesion masks are concatenated with the input images and then taken as inputs for
the discriminator D which has five convolution mapping tuples. Each tuple consists of two
convolutional layers with kernel size of 3 and one max-pooling layer with a stride of 2 [...] ReLU
activation and batch normalization. A global average pooling is employed at the end of D, followed by
a dense connection and Sigmoid activation that outputs if the predicted lesion maps are supervised by
real or pseudo mask ground-truths."
"""

from __future__ import annotations

import torch
from torch import nn

from .layout import channels_last, nhwc
from .xception_unet import ConvTuple


class LesionDiscriminator(nn.Module):
    """D(X, G(X)): real = masks predicted on pixel-annotated images, fake = on image-level ones.

    Args:
        in_channels: image channels (3).
        num_lesions: L mask channels concatenated to the image.
        width: multiplies the tuple widths (64, 128, 256, 512, 512).
        tuples: number of conv tuples (paper: 5).

    Shapes:
        ``forward(image B x 3 x H x W, masks B x L x H x W)`` -> ``B`` logits (sigmoid = p(real)).
    """

    def __init__(self, in_channels: int = 3, num_lesions: int = 4, width: float = 1.0, tuples: int = 5) -> None:
        super().__init__()
        chans = [max(4, round(64 * width * min(2**i, 8))) for i in range(tuples)]
        layers: list[nn.Module] = []
        c = in_channels + num_lesions
        for out in chans:
            layers += [ConvTuple(c, out), nn.MaxPool2d(2, stride=2)]
            c = out
        self.features = nn.Sequential(*layers)
        self.in_channels = in_channels + num_lesions
        self.fc = nn.Linear(c, 1)
        channels_last(self)  # faster on the CPU (layout.py)

    def forward(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        if image.shape[-2:] != masks.shape[-2:]:
            raise ValueError(f"image {tuple(image.shape[-2:])} and masks {tuple(masks.shape[-2:])} differ in size")
        h = self.features(nhwc(torch.cat([image, masks], 1)))
        return self.fc(h.mean((2, 3))).squeeze(1)
