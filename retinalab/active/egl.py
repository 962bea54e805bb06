"""Expected gradient length (paper 002, Eq. 1), exactly and without a backward pass per sample.

    Phi(x) = sum_j p(y = j | x) * || grad_theta J(x, y = j) ||_2

over a parameter scope: ``fc`` (the fully connected layers: paper 002 back-propagates "down to the
first fully connected layer"), ``last`` (the output layer only) or ``all``.

Fast path for ``fc``/``last``: for softmax cross-entropy with label j the error at the logits is
delta = p - e_j, and a linear layer's per-sample weight gradient is the outer product delta a^T, whose
Frobenius norm is ||delta|| ||a||; with the bias, ||grad||^2 = ||delta||^2 (||a||^2 + 1). Back-propagating
the K errors of every sample through the FC stack in one batched pass gives every (sample, class)
gradient norm exactly, for about the cost of the forward pass.

``all``, for networks whose parameters all sit in ``Conv2d``/``Linear`` layers (LeNet, conv-large
without weight norm, plain CNNs), is exact and batched per layer (:func:`egl_layerwise`): one forward
pass records each layer's input, one backward pass carries the K error signals of the whole batch at
once (``is_grads_batched``), and each layer's per-sample gradient norm follows from its input and its
error: ``||delta|| sqrt(||a||^2 + 1)`` for a linear layer, and for a convolution the per-sample
gradient ``delta_b unfold(a_b)^T`` (O x C k k, small) summed over positions. Other networks fall back
to per-sample gradients from ``torch.func`` (vmap of grad), which is exact but several times slower
on a CPU. Both work in chunks, so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Scope = Literal["fc", "last", "all"]


def _act_grad(act: nn.Module | None, z: torch.Tensor) -> torch.Tensor:
    """Derivative of the activation at the pre-activation ``z`` (elementwise)."""
    if act is None or isinstance(act, nn.Identity):
        return torch.ones_like(z)
    if isinstance(act, nn.ReLU):
        return (z > 0).to(z.dtype)
    if isinstance(act, nn.LeakyReLU):
        return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, act.negative_slope))
    raise TypeError(f"EGL fast path supports ReLU, LeakyReLU and identity activations, not {type(act).__name__}")


@torch.no_grad()
def egl_fc(model: nn.Module, x: torch.Tensor, scope: Literal["fc", "last"] = "fc") -> tuple[torch.Tensor, torch.Tensor]:
    """EGL over the fully connected stack (``model.features`` then ``model.fc_stack()``).

    Returns:
        ``(phi, probs)``: ``B`` EGL scores and ``B x K`` class probabilities.
    """
    a = model.features(x)
    stack = model.fc_stack()
    inputs, preacts = [], []
    for layer, act in stack:
        inputs.append(a)
        z = layer(a)
        preacts.append(z)
        a = z if act is None else act(z)
    logits = a
    p = torch.softmax(logits, dim=1)
    b, k = p.shape
    # delta at the logits for every class j: p - e_j  -> B x K(class j) x K(logit)
    delta = p[:, None, :] - torch.eye(k, dtype=p.dtype, device=p.device)[None]
    sq = torch.zeros(b, k, dtype=p.dtype, device=p.device)
    layers = list(range(len(stack)))[::-1]
    if scope == "last":
        layers = layers[:1]
    for n, li in enumerate(layers):
        layer, _ = stack[li]
        a_in = inputs[li]
        in_sq = a_in.pow(2).sum(1) + (1.0 if layer.bias is not None else 0.0)  # B
        sq += delta.pow(2).sum(2) * in_sq[:, None]
        if n + 1 < len(layers):
            prev_layer, prev_act = stack[li - 1]
            delta = (delta @ layer.weight) * _act_grad(prev_act, preacts[li - 1])[:, None, :]
    phi = (p * sq.clamp_min(0).sqrt()).sum(1)
    return phi, p


def _scope_params(model: nn.Module, scope: Scope) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters())
    if scope == "all":
        return named
    stack = model.fc_stack()
    layers = [stack[-1][0]] if scope == "last" else [layer for layer, _ in stack]
    ids = {id(p) for layer in layers for p in layer.parameters()}
    return {n: p for n, p in named.items() if id(p) in ids}


def egl_func(
    model: nn.Module, x: torch.Tensor, scope: Scope = "all", chunk: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """EGL from exact per-sample gradients (torch.func), ``chunk`` samples at a time."""
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    wrt = list(_scope_params(model, scope))

    def loss(sub: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, ({**params, **sub}, buffers), (xi[None],))
        return F.cross_entropy(out, yi[None])

    g = vmap(grad(loss), in_dims=(None, 0, 0))
    phis, probs = [], []
    for start in range(0, len(x), chunk):
        xb = x[start : start + chunk]
        with torch.no_grad():
            p = torch.softmax(model(xb), dim=1)
        sub = {n: params[n] for n in wrt}
        norms = []
        for j in range(p.shape[1]):
            yj = torch.full((len(xb),), j, dtype=torch.long, device=x.device)
            grads = g(sub, xb, yj)
            norms.append(torch.sqrt(sum(v.flatten(1).pow(2).sum(1) for v in grads.values())))
        phis.append((p * torch.stack(norms, 1)).sum(1))
        probs.append(p)
    return torch.cat(phis), torch.cat(probs)


def _layerwise_ok(model: nn.Module) -> bool:
    """True when every parameter belongs to a Linear or an ungrouped Conv2d (the layerwise method's case)."""
    covered = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)
        for p in m.parameters(recurse=False)
    }
    return all(id(p) in covered for p in model.parameters())


def egl_layerwise(model: nn.Module, x: torch.Tensor, chunk: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """EGL over all parameters, exactly, for networks made of ``Linear`` and ``Conv2d`` layers.

    Per chunk: one forward pass with hooks recording every layer's input and output, one batched
    backward pass of the K error signals ``p - e_j`` from the logits to every layer output, then the
    per-sample gradient norms layer by layer (see the module docstring). No loop over samples or classes.
    """
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    phis, probs = [], []
    ins: dict[nn.Module, torch.Tensor] = {}
    outs: dict[nn.Module, torch.Tensor] = {}

    def record(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        ins[m], outs[m] = args[0].detach(), out

    for start in range(0, len(x), chunk):
        xb = x[start : start + chunk]
        ins.clear()
        outs.clear()
        hooks = [m.register_forward_hook(record) for m in layers]
        try:
            with torch.enable_grad():
                logits = model(xb)
        finally:
            for h in hooks:
                h.remove()
        used = [m for m in layers if m in outs]
        p = torch.softmax(logits.detach(), 1)
        b, k = p.shape
        errors = p[None] - torch.eye(k, dtype=p.dtype, device=p.device)[:, None, :]  # K x B x K: dJ/dlogits for label j
        deltas = torch.autograd.grad(logits, [outs[m] for m in used], grad_outputs=errors, is_grads_batched=True)
        sq = torch.zeros(k, b, dtype=p.dtype, device=p.device)
        for m, d in zip(used, deltas, strict=True):
            a = ins[m]
            if isinstance(m, nn.Linear):
                a, d = a.reshape(b, -1, a.shape[-1]), d.reshape(k, b, -1, d.shape[-1])  # B x T x I, K x B x T x O
                if a.shape[1] == 1:  # one input vector per sample: the gradient is an outer product
                    sq += d[:, :, 0].pow(2).sum(-1) * a[:, 0].pow(2).sum(-1)[None]
                else:  # a sequence per sample: the gradient sums the outer products of its positions
                    sq += torch.einsum("kbto,bti->kboi", d, a).pow(2).sum((2, 3))
                if m.bias is not None:
                    sq += d.sum(2).pow(2).sum(-1)
            else:
                u = F.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)  # B x (C k k) x P
                dd = d.flatten(3)  # K x B x O x P
                sq += torch.einsum("kbop,bcp->kboc", dd, u).pow(2).sum((2, 3))
                if m.bias is not None:
                    sq += dd.sum(-1).pow(2).sum(-1)
        phis.append((p * sq.clamp_min(0).sqrt().T).sum(1))
        probs.append(p)
    return torch.cat(phis), torch.cat(probs)


def egl(
    model: nn.Module,
    x: torch.Tensor,
    scope: Scope = "fc",
    chunk: int = 128,
    method: Literal["auto", "layerwise", "func"] = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Phi (Eq. 1 of paper 002) and class probabilities for a batch ``x``.

    ``fc``/``last`` use the closed form (one forward pass). ``all`` uses :func:`egl_layerwise` where the
    network allows it (``method="auto"``), else chunked ``torch.func`` per-sample gradients.
    The model is put in eval mode for scoring (dropout off) and restored afterwards.

    Shapes: ``x`` B x C x H x W -> ``(phi B, probs B x K)``.
    """
    if scope not in ("fc", "last", "all"):
        raise ValueError(f"scope must be 'fc', 'last' or 'all', got {scope!r}")
    if method not in ("auto", "layerwise", "func"):
        raise ValueError(f"method must be 'auto', 'layerwise' or 'func', got {method!r}")
    was = model.training
    model.eval()
    try:
        if scope == "all":
            if method == "func" or (method == "auto" and not _layerwise_ok(model)):
                return egl_func(model, x, scope, chunk)
            if not _layerwise_ok(model):
                raise TypeError(
                    f"{type(model).__name__} has parameters outside Linear/Conv2d layers; use method='func'"
                )
            return egl_layerwise(model, x, chunk)
        return egl_fc(model, x, scope)
    finally:
        model.train(was)


@torch.no_grad()
def score_pool(
    model: nn.Module, batches: Iterable[torch.Tensor], scope: Scope = "fc", device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Phi over a pool given as an iterable of batches; memory is bounded by one batch."""
    out = []
    for xb in batches:
        phi, _ = egl(model, xb.to(device), scope)
        out.append(phi.cpu())
    return torch.cat(out) if out else torch.zeros(0)


def egl_naive(model: nn.Module, x: torch.Tensor, scope: Scope = "fc") -> torch.Tensor:
    """Reference: one forward per sample and one backward per class (slow; for tests and benchmarks)."""
    was = model.training
    model.eval()
    params = list(_scope_params(model, scope).values())
    phis = []
    for xi in x:
        logits = model(xi[None])
        p = torch.softmax(logits, 1)[0].detach()
        total = 0.0
        for j in range(len(p)):
            gr = torch.autograd.grad(
                F.cross_entropy(logits, torch.tensor([j], device=x.device)), params, retain_graph=True
            )
            total = total + p[j] * torch.sqrt(sum(g.pow(2).sum() for g in gr))
        phis.append(total)
    model.train(was)
    return torch.stack(phis)
