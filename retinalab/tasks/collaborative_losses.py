"""Paper 001's losses (Eq. 3) and the loading of one network's weights from a stage-1 checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoints import CheckpointError


def masked_bce(logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
    """L_CE of Eq. 3: pixel binary cross-entropy, averaged over the lesion channels each image is
    annotated for (``known`` B x L; all when ``None``). Shapes: logits/target ``B x L x H x W``."""
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((2, 3))  # B x L
    if known is None:
        return per.mean()
    w = known.to(per.dtype)
    return (per * w).sum() / w.sum().clamp_min(1.0)


def l_seg(d_real: torch.Tensor, d_fake: torch.Tensor, l_ce: torch.Tensor, lam: float = 10.0) -> torch.Tensor:
    """Eq. 3 as written: E log D(X^P, G(X^P)) + E log(1 - D(X^I, G(X^I))) + lambda L_CE (D logits in)."""
    return F.logsigmoid(d_real).mean() + F.logsigmoid(-d_fake).mean() + lam * l_ce


def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """-L_Adv: binary cross-entropy with real = pixel-annotated, fake = image-level."""
    return F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real)) + F.binary_cross_entropy_with_logits(
        d_fake, torch.zeros_like(d_fake)
    )


def generator_adversarial_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """G's side of L_Adv, non-saturating: -E log D(X^I, G(X^I))."""
    return F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))


def load_part(path: str, prefix: str, module: torch.nn.Module, strict: bool, ignore: tuple[str, ...] = ()) -> None:
    """Load the ``prefix.*`` weights of a Lightning checkpoint into ``module`` (leaving out the weights
    whose names start with one of ``ignore``: parts this model does not have)."""
    from ..checkpoints import read_checkpoint, shape_mismatches

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist")
    state = read_checkpoint(p)  # a truncated or foreign file is named
    weights = {k[len(prefix) + 1 :]: v for k, v in state.get("state_dict", state).items() if k.startswith(prefix + ".")}
    weights = {k: v for k, v in weights.items() if not k.startswith(ignore)} if ignore else weights
    if not weights:
        raise CheckpointError(
            f"{p}: no '{prefix}.' weights in this checkpoint; pass the checkpoint of the stage that trains the {prefix}"
        )
    shapes, listed = shape_mismatches(weights, module)
    if shapes:
        raise CheckpointError(
            f"{p}: {len(shapes)} '{prefix}' weight(s) of another shape ({listed}); same widths/backbone as the "
            "checkpoint?"
        )
    missing, unexpected = module.load_state_dict(weights, strict=False)
    if unexpected or (strict and missing):
        raise CheckpointError(
            f"{p}: '{prefix}' weights do not fit this model (missing {missing[:5]}, unexpected {unexpected[:5]}); same "
            "widths/backbone as the checkpoint?"
        )
