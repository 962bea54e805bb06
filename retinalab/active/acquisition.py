"""Acquisition scores beside EGL: the strategies every active-learning paper compares with.

Each maps a batch of pool patches to one score per patch, larger = more worth labelling, so that
Algorithm 1 (the top-k patches) and Algorithm 2 (the image with the largest summed score, then its
top-k patches) use them exactly as they use EGL:

* ``egl``: expected gradient length (paper 002, Eq. 1; :mod:`retinalab.active.egl`);
* ``entropy``: the entropy of the predicted class distribution, ``-sum_j p_j log p_j`` (nats);
* ``margin``: ``1 - (p_(1) - p_(2))``, one minus the gap between the two largest class probabilities
  (the smallest gaps first; with two classes ``1 - |p_1 - p_0|``);
* ``bald``: the mutual information between the label and the weights under Monte-Carlo dropout
  (Houlsby et al. 2011; Gal et al. 2017), from ``T`` stochastic forward passes:
  ``H(mean_t p_t) - mean_t H(p_t)``. The network needs dropout (LeNet's ``dropout``); the passes are
  seeded, so a resumed round draws the same masks.

baal 2.x computes the last three from Monte-Carlo predictions, but it requires Jupyter, scikit-learn and
structlog < 23 (86 packages on top of retinalab's); the formulas are a few lines, tested against hand
computations in ``tests/test_acquisition.py``.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from .egl import Scope, egl

Acquisition = Literal["egl", "entropy", "margin", "bald", "random"]
ACQUISITIONS: tuple[str, ...] = get_args(Acquisition)
#: strategies that score patches (random draws them instead)
SCORED: tuple[str, ...] = ("egl", "entropy", "margin", "bald")


def _normalised(p: torch.Tensor) -> torch.Tensor:
    """``p`` in float64, rows renormalised: a float32 softmax sums to 1 only within ~1e-7, which near
    p = 0.5 outweighs the differences between patches' entropies (ln 2 - 2e^2)."""
    p = p.double()
    return p / p.sum(-1, keepdim=True).clamp_min(1e-300)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Predictive entropy (nats) of class probabilities ``p`` (B x K) -> B; ``0 log 0 = 0``."""
    p = _normalised(p)
    return -(torch.special.xlogy(p, p)).sum(-1)


def margin(p: torch.Tensor) -> torch.Tensor:
    """``1 - (p_(1) - p_(2))`` of class probabilities ``p`` (B x K, K >= 2) -> B, in [0, 1]."""
    top = torch.topk(_normalised(p), 2, dim=-1).values
    return 1.0 - (top[..., 0] - top[..., 1])


def bald(p_samples: torch.Tensor) -> torch.Tensor:
    """BALD from ``T x B x K`` Monte-Carlo class probabilities -> B (nats, >= 0)."""
    p_samples = _normalised(p_samples)
    return (entropy(p_samples.mean(0)) - entropy(p_samples).mean(0)).clamp_min(0.0)


def has_dropout(model: nn.Module) -> bool:
    """Whether ``model`` holds a dropout layer with a positive rate (what BALD needs)."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


@torch.no_grad()
def mc_dropout_probs(model: nn.Module, x: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
    """``samples`` forward passes of ``x`` with only the dropout layers in training mode -> T x B x K
    softmax probabilities. The dropout masks come from a generator seeded with ``seed`` (the global
    random state is restored afterwards), so the same call gives the same masks.

    A network whose dropout layers are all in its fully connected head (``dropout_in_head``, with
    ``features`` and ``head`` methods: LeNet) computes its features once and reruns only the head,
    with the same masks in the same order as whole passes would draw (the convolutions draw none)."""
    return _mc_dropout(model, x, samples, seed)[0]


@torch.no_grad()
def _mc_dropout(model: nn.Module, x: torch.Tensor, samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`mc_dropout_probs` and, when the head alone was rerun, the class probabilities with dropout
    off from the same features (else ``None``)."""
    if samples < 1:
        raise ValueError(f"mc_samples must be >= 1, got {samples}")
    if not has_dropout(model):
        raise ValueError(f"BALD needs a network with dropout; {type(model).__name__} has none (set dropout > 0)")
    was = {m: m.training for m in model.modules()}
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.train()
    devices = [x.device] if x.device.type == "cuda" else []
    split = getattr(model, "dropout_in_head", False)
    try:
        if not split:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                return torch.stack([torch.softmax(model(x).float(), -1) for _ in range(samples)]), None
        features = model.features(x)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            passes = torch.stack([torch.softmax(model.head(features).float(), -1) for _ in range(samples)])
        model.eval()
        return passes, torch.softmax(model.head(features).float(), -1)
    finally:
        for m, t in was.items():
            m.train(t)


@torch.no_grad()
def predict_probs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class probabilities of ``x`` in eval mode (dropout off); the mode is restored afterwards."""
    was = model.training
    model.eval()
    try:
        return torch.softmax(model(x).float(), -1)
    finally:
        model.train(was)


def acquisition_scores(
    model: nn.Module, x: torch.Tensor, acquisition: str, scope: Scope = "fc", mc_samples: int = 20, seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of a batch ``x`` under ``acquisition`` and the model's class probabilities (eval mode).

    Shapes: ``x`` B x C x H x W -> ``(scores B, probs B x K)``; entropy, margin and BALD in float64.
    """
    if acquisition == "egl":
        return egl(model, x, scope)
    if acquisition not in SCORED:
        raise ValueError(f"acquisition {acquisition!r} does not score patches; choose one of {', '.join(SCORED)}")
    if acquisition == "bald":
        passes, p = _mc_dropout(model, x, mc_samples, seed)
        return bald(passes), (predict_probs(model, x) if p is None else p)
    p = predict_probs(model, x)
    # float64 scores: entropy near p = 0.5 (ln 2 - 2 e^2) would tie in float32 where margin (1 - 2e) does
    # not, and the two, which rank a two-class pool identically, would then choose differently
    if acquisition == "entropy":
        return entropy(p), p
    return margin(p), p
