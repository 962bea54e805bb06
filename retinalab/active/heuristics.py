"""Acquisition heuristics: EGL and the strategies every active-learning paper compares it with.

Each is one registered class (:func:`register_heuristic`) that knows its name, its colour in the
figures, how its score is named on a heatmap's colour bar and whether the network needs dropout. A
scored heuristic maps a batch of pool patches to one score per patch, larger = more worth labelling,
so that Algorithm 1 (the top-k patches) and Algorithm 2 (the image with the largest summed score, then
its top-k patches) use it exactly as they use EGL:

* ``egl``: expected gradient length (paper 002, Eq. 1; :mod:`retinalab.active.egl`);
* ``entropy``: the entropy of the predicted class distribution, ``-sum_j p_j log p_j`` (nats);
* ``margin``: ``1 - (p_(1) - p_(2))``, one minus the gap between the two largest class probabilities
  (the smallest gaps first; with two classes ``1 - |p_1 - p_0|``);
* ``bald``: the mutual information between the label and the weights under Monte-Carlo dropout
  (Houlsby et al. 2011; Gal et al. 2017), from ``T`` stochastic forward passes:
  ``H(mean_t p_t) - mean_t H(p_t)``. The network needs dropout (LeNet's ``dropout``); the passes are
  seeded, so a resumed round draws the same masks;
* ``random``: draws uniformly (not scored); its heatmaps and interestingness use EGL's scores.

A lab's own heuristic is one class in its own module, named in the run's config as
``acquisition: mylab.heuristics:farthest``::

    @register_heuristic
    class Farthest(Heuristic):
        name, colour = "farthest", "tab:olive"
        def scores(self, model, x, scope="fc", mc_samples=20, seed=0):
            ...

baal 2.x computes entropy, margin and BALD from Monte-Carlo predictions, but it requires Jupyter,
scikit-learn and structlog < 23 (86 packages on top of retinalab's); the formulas are a few lines,
tested against hand computations in ``tests/active/test_acquisition.py``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..utils.registry import Registry, qualname
from .egl import Scope, egl


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


class Heuristic:
    """An acquisition heuristic (subclass, set the class attributes, and decorate with
    :func:`register_heuristic`).

    Attributes:
        name: the name configs use (``acquisition: <name>``).
        colour: its colour in the figures (a matplotlib colour; ``None``: the next of the cycle).
        score_name: ``(what the score is, its unit)`` for a heatmap's colour bar.
        meaning: what a high score says about a patch, in a clinician's words (the labelling page's legend).
        needs_dropout: whether the network needs dropout layers (BALD's Monte-Carlo passes); such a run's
            ``dropout`` defaults to :attr:`default_dropout` and 0 is refused.
        scored: whether it ranks patches by :meth:`scores` (``False``: draws uniformly, the baseline; its
            :meth:`scores` are then only shown, in heatmaps and interestingness).
    """

    name: ClassVar[str] = ""
    colour: ClassVar[str | None] = None
    score_name: ClassVar[tuple[str, str]] = ("expected gradient length", "Phi")
    meaning: ClassVar[str] = "its label would change the model most"
    needs_dropout: ClassVar[bool] = False
    default_dropout: ClassVar[float] = 0.5
    scored: ClassVar[bool] = True

    def scores(
        self, model: nn.Module, x: torch.Tensor, scope: Scope = "fc", mc_samples: int = 20, seed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of a batch ``x`` (B x C x H x W) -> ``(scores B, class probabilities B x K)``."""
        raise NotImplementedError


HEURISTICS: Registry[type[Heuristic]] = Registry("acquisition")


def register_heuristic(cls: type[Heuristic]) -> type[Heuristic]:
    """Class decorator registering a :class:`Heuristic` under its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} sets no name")
    HEURISTICS.add(cls.name, cls, qualname(cls))
    return cls


def get_heuristic(name: str) -> Heuristic:
    """An instance of the heuristic registered as ``name`` (``module:name`` imports ``module`` first).

    Raises:
        ConfigError: an unknown name, listing the registered ones.
    """
    return HEURISTICS.get(name, "acquisition")()


def score_label(name: str) -> str:
    """How the labelling page names the score it shows beside a query (``name``: the run's acquisition)."""
    try:
        heuristic = get_heuristic(name)
    except ValueError:  # a lab's heuristic whose module this process cannot import
        return "score"
    what, unit = heuristic.score_name
    return f"{what} ({unit})" if heuristic.scored else f"{what} ({unit}; queries drawn at random)"


def score_meaning(name: str) -> tuple[str, str]:
    """``(the score's name, what a high score says)`` for the labelling page's heatmap legend."""
    try:
        heuristic = get_heuristic(name)
    except ValueError:
        return "score", "a high score"
    return heuristic.score_name[0], heuristic.meaning


def heuristic_names() -> list[str]:
    """The registered heuristics' names (what ``acquisition`` may be)."""
    return HEURISTICS.names()


@register_heuristic
class EGL(Heuristic):
    """Expected gradient length (paper 002, Eq. 1)."""

    name, colour = "egl", "tab:green"
    score_name = ("expected gradient length", "Phi")

    def scores(self, model, x, scope="fc", mc_samples=20, seed=0):
        return egl(model, x, scope)


@register_heuristic
class Entropy(Heuristic):
    """Predictive entropy (nats), in float64."""

    name, colour = "entropy", "tab:red"
    score_name = ("predictive entropy", "nats")
    meaning = "the model is least sure of it"

    def scores(self, model, x, scope="fc", mc_samples=20, seed=0):
        # float64 scores: entropy near p = 0.5 (ln 2 - 2 e^2) would tie in float32 where margin (1 - 2e) does
        # not, and the two, which rank a two-class pool identically, would then choose differently
        p = predict_probs(model, x)
        return entropy(p), p


@register_heuristic
class Margin(Heuristic):
    """One minus the gap between the two largest class probabilities, in float64."""

    name, colour = "margin", "tab:purple"
    score_name = ("1 - margin", "1 - (p1 - p2)")
    meaning = "the model's two answers are closest"

    def scores(self, model, x, scope="fc", mc_samples=20, seed=0):
        p = predict_probs(model, x)
        return margin(p), p


@register_heuristic
class BALD(Heuristic):
    """Mutual information between label and weights under ``mc_samples`` seeded dropout passes."""

    name, colour = "bald", "tab:brown"
    score_name = ("BALD", "nats")
    meaning = "the model's dropout samples disagree most about it"
    needs_dropout = True

    def scores(self, model, x, scope="fc", mc_samples=20, seed=0):
        passes, p = _mc_dropout(model, x, mc_samples, seed)
        return bald(passes), (predict_probs(model, x) if p is None else p)


@register_heuristic
class Random(EGL):
    """Uniform draws, the baseline; its heatmaps and interestingness are EGL's."""

    name, colour = "random", "tab:blue"
    scored = False


def acquisition_scores(
    model: nn.Module,
    x: torch.Tensor,
    acquisition: str,
    scope: Scope = "fc",
    mc_samples: int = 20,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of a batch ``x`` under the heuristic ``acquisition`` and the model's class probabilities (eval
    mode). Shapes: ``x`` B x C x H x W -> ``(scores B, probs B x K)``. A heuristic that draws instead of
    ranking (``random``) gives the scores its heatmaps show (``random``: EGL's, which it inherits).

    Raises:
        ConfigError: an unknown heuristic.
    """
    return get_heuristic(acquisition).scores(model, x, scope, mc_samples, seed)
