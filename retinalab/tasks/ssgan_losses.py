"""The losses of paper 000's patch SSL-GAN (section 2; Salimans et al. 2016), as pure functions of the
discriminator's real-class logits and features (the fake class's logit is fixed at 0). The formulas
are written out in :mod:`retinalab.tasks.patch_ssgan`'s docstring."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supervised_loss(logits_lab: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the K real classes: -E log p(y | x, y < K+1)."""
    return F.cross_entropy(logits_lab, labels)


def unsupervised_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """-E_data log(1 - p_fake) - E_G log p_fake, with the fake logit fixed at 0.

    Args:
        logits_real: ``B x K`` real-class logits of unlabelled data.
        logits_fake: ``B' x K`` logits of generated patches.
    """
    lse_real = torch.logsumexp(logits_real, dim=1)
    lse_fake = torch.logsumexp(logits_fake, dim=1)
    # log(1 - p_fake) = LSE - softplus(LSE);  log p_fake = -softplus(LSE)
    return -(lse_real - F.softplus(lse_real)).mean() + F.softplus(lse_fake).mean()


def feature_matching_loss(h_real: torch.Tensor, h_fake: torch.Tensor) -> torch.Tensor:
    """|| mean_batch h(x) - mean_batch h(G(z)) ||_1 (paper 000's L_G)."""
    return (h_real.mean(0) - h_fake.mean(0)).abs().sum()
