"""Paper 002's Eq. 1 written out for tests, independently of retinalab.active.egl: one autograd pass per
patch and class, over the LeNet parameters named here ("down to the first fully connected layer")."""

from __future__ import annotations

import numpy as np
import torch


def phi_by_hand(net, x: torch.Tensor) -> np.ndarray:
    """EGL of each patch of ``x`` (B x C x H x W): sum over classes j of p(j | x) times the length of the
    gradient of the cross-entropy with label j, over fc1 and fc2."""
    params = [net.fc1.weight, net.fc1.bias, net.fc2.weight, net.fc2.bias]
    out = []
    for xi in x:
        logits = net(xi[None])
        p = logits.softmax(1)[0].detach()
        total = 0.0
        for j in range(logits.shape[1]):
            grads = torch.autograd.grad(
                torch.nn.functional.cross_entropy(logits, torch.tensor([j])), params, retain_graph=True
            )
            total += float(p[j]) * float(torch.cat([g.flatten() for g in grads]).norm())
        out.append(total)
    return np.array(out)
