"""Lesion-attentive disease grading of paper 001 (section 3.3, Eq. 4-6).

A grading CNN C is split at a high-resolution stage: ``low`` (stem and first stage) gives f_low, the
rest (``high``) maps it to the top features. For each lesion l (Eq. 5-6):

    f_l   = ReLU(W_l^low  concat(m_l, f_low) + b_l^low)          (1x1 convolution)
    alpha_l = Sigmoid(W_l^high (f_l * f_high) + b_l^high)         (1x1 convolution to one map)

where m_l is G's mask resized to f_low and f_high is "a global context vector [with] the same channel
dimension as f_l, computed through a 1x1 convolution over the top layer feature" (here: global average
pooling of that convolution's output). The attentive features alpha_l * f_low go through the shared
``high`` part of the grading network, their pooled vectors are concatenated, and a final linear
classifier predicts the grade. alpha_l, resized to the mask size, are the pseudo masks that refine G.

``attention=False`` is paper 001's ``Ori`` baseline: the plain grading CNN.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.errors import ConfigError
from ..weights import IMAGENET_MEAN, IMAGENET_STD
from .backbones import get_backbone, grading_backbones


def _backbone(name: str, weights: str | None) -> tuple[nn.Module, tuple[tuple[str, ...], tuple[str, ...]]]:
    """The grading network registered as ``name`` (without its classifier) and its low/high split."""
    spec = get_backbone(name)
    if spec.grading_split is None:
        raise ConfigError(
            f"backbone {name!r} cannot grade (no known stem/stage split); choose one of "
            f"{', '.join(grading_backbones())}"
        )
    # the grader normalises its input itself (input_norm), with the weights' statistics
    return spec.build(num_classes=0, width=1.0, weights=weights, normalise=False), spec.grading_split


class BranchBatchNorm2d(nn.BatchNorm2d):
    """A ``BatchNorm2d`` whose weight and bias are shared by several branches but whose running
    statistics are kept per branch (``branch`` selects them; 0 uses the ordinary buffers).

    Paper 001's grader sends the plain image features and one attentive version per lesion through the
    same grading network ("all the lesion attentive features share the same weights"). Those inputs are
    distributed very differently (a microaneurysm mask keeps a fraction of a percent of the features),
    and one set of running statistics averaged over all of them matches none: in eval mode such a grader
    predicts one grade for every photograph (measured in docs/benchmarks.md, "Paper 001 ablations").
    Each branch keeps its own statistics; the weights stay shared.
    """

    _STATS = ("running_mean", "running_var", "num_batches_tracked")

    def __init__(self, num_features: int, branches: int, **kw) -> None:
        super().__init__(num_features, **kw)
        self.branches, self.branch = branches, 0
        for b in range(1, branches):
            for name in self._STATS:
                self.register_buffer(f"{name}_{b}", getattr(self, name).clone())

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, branches: int) -> BranchBatchNorm2d:
        """The same layer (weights, statistics for every branch) with per-branch statistics."""
        new = cls(
            bn.num_features,
            branches,
            eps=bn.eps,
            momentum=bn.momentum,
            affine=bn.affine,
            track_running_stats=bn.track_running_stats,
        )
        new.load_state_dict(bn.state_dict())  # branch statistics start as copies of the base ones
        return new.to(bn.weight.device if bn.affine else "cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch == 0 or not self.track_running_stats:
            return super().forward(x)
        buffers = self._buffers
        base = [buffers[name] for name in self._STATS]
        for name in self._STATS:
            buffers[name] = buffers[f"{name}_{self.branch}"]  # updated in place in training mode
        try:
            return super().forward(x)
        finally:
            for name, t in zip(self._STATS, base, strict=True):
                buffers[name] = t

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        if getattr(self, "branches", 1) > 1:
            for b in range(1, self.branches):
                getattr(self, f"running_mean_{b}").zero_()
                getattr(self, f"running_var_{b}").fill_(1)
                getattr(self, f"num_batches_tracked_{b}").zero_()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # a checkpoint without per-branch statistics (a stage-1 grader, an older stage-2 one): every
        # branch starts from the base statistics
        for b in range(1, self.branches):
            for name in self._STATS:
                if prefix + f"{name}_{b}" not in state_dict and prefix + name in state_dict:
                    state_dict[prefix + f"{name}_{b}"] = state_dict[prefix + name].clone()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def _branch_batchnorms(module: nn.Module, branches: int) -> list[BranchBatchNorm2d]:
    """Replace every ``BatchNorm2d`` under ``module`` by a :class:`BranchBatchNorm2d`; return them."""
    out = []
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, BranchBatchNorm2d):
            new = BranchBatchNorm2d.from_batchnorm(child, branches)
            setattr(module, name, new)
            out.append(new)
        else:
            out += _branch_batchnorms(child, branches)
    return out


class LesionAttentionGrader(nn.Module):
    """Grading CNN with paper 001's lesion attention.

    Args:
        num_classes: grades (5 for ICDR).
        num_lesions: L attention branches (MA, HE, EX, SE).
        backbone: timm ResNet (from scratch unless ``weights`` or ``pretrained_path`` says otherwise).
        attention: ``False`` gives the ``Ori`` baseline (no lesion features).
        lesion_features: with ``attention``: ``attention`` (paper 001's lesion attention, Eq. 5-6: one
            attention map per lesion from G's mask and the image features, ``alpha``, the pseudo masks)
            or ``masks`` (``Lesion(Pretrained)`` of section 4.2: G's masks themselves weight the
            low-level features, "without the lesion attention model"; no ``alpha``).
        pretrained_path: local timm/torchvision weights for the backbone (the older spelling of a
            local file in ``weights``).
        weights: ``imagenet``, ``hf-hub:<org>/<name>`` or a local file (:mod:`retinalab.weights`);
            ``None``: from scratch.
        input_norm: ``imagenet`` subtracts the weights' mean and divides by their std (ImageNet's for
            timm's ResNets; what pretrained weights expect), ``none`` feeds the [0, 1] image as it is;
            default: ``imagenet`` with pretrained weights, ``none`` without.
        attention_init: ``default`` (PyTorch's initialisation of the 1x1 convolutions; paper 001 does not
            say) or ``mask``: each attention map starts as a sharpened copy of G's mask,
            alpha_l = sigmoid(8 m_l - 4 + small terms), see :meth:`init_attention_from_masks`. With the
            default, G's mask is one of 65 input channels of Eq. 5 and the maps start near 0.5
            everywhere, unrelated to the mask; on the CPU benchmark they stayed so for 40 stage-2 batches
            (issue 31: the grades did not change when G's masks were replaced by zeros).

    Shapes:
        ``forward(image B x 3 x H x W, masks B x L x H' x W' | None)`` -> dict with ``logits`` B x K and,
        with attention, ``alpha`` B x L x h x w (f_low's resolution, H/4) in [0, 1]. Without masks
        (or with ``attention=False``) it is the plain grading CNN (stage-1 pre-training, ``Ori``).
    """

    def __init__(
        self,
        num_classes: int = 5,
        num_lesions: int = 4,
        backbone: str = "resnet18",
        attention: bool = True,
        pretrained_path: str | None = None,
        input_norm: Literal["imagenet", "none"] | None = None,
        lesion_features: Literal["attention", "masks"] = "attention",
        attention_init: Literal["default", "mask"] = "default",
        weights: str | None = None,
    ) -> None:
        super().__init__()
        if lesion_features not in ("attention", "masks"):
            raise ConfigError(f"lesion_features must be 'attention' or 'masks', got {lesion_features!r}")
        self.lesion_features = lesion_features
        if attention_init not in ("default", "mask"):
            raise ConfigError(f"attention_init must be 'default' or 'mask', got {attention_init!r}")
        if input_norm not in (None, "imagenet", "none"):
            raise ConfigError(f"input_norm must be 'imagenet' or 'none', got {input_norm!r}")
        if weights and pretrained_path:
            raise ConfigError("set weights or pretrained_path (the older name of a local weights file), not both")
        weights = weights or pretrained_path
        self.input_norm = input_norm or ("imagenet" if weights else "none")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        net, (low_names, high_names) = _backbone(backbone, weights)
        if weights:  # the statistics the weights were trained with (timm's pretrained_cfg)
            cfg = getattr(net, "pretrained_cfg", {}) or {}
            self.mean.copy_(torch.tensor(cfg.get("mean", IMAGENET_MEAN)).view(1, 3, 1, 1))
            self.std.copy_(torch.tensor(cfg.get("std", IMAGENET_STD)).view(1, 3, 1, 1))
        self.low = nn.Sequential(*[getattr(net, n) for n in low_names])
        self.high = nn.Sequential(*[getattr(net, n) for n in high_names])
        c_low = net.feature_info[1]["num_chs"]
        c_top = net.num_features
        self.attention = attention
        self.num_lesions = num_lesions
        self.classifier_ori = nn.Linear(c_top, num_classes)
        if attention:
            if lesion_features == "attention":
                self.w_low = nn.ModuleList([nn.Conv2d(c_low + 1, c_low, 1) for _ in range(num_lesions)])  # Eq. 5
                self.to_context = nn.Conv2d(c_top, c_low, 1)  # f_high: 1x1 conv over the top features
                self.w_high = nn.ModuleList([nn.Conv2d(c_low, 1, 1) for _ in range(num_lesions)])  # Eq. 6
                if attention_init == "mask":
                    self.init_attention_from_masks()
            self.classifier = nn.Linear(num_lesions * c_top, num_classes)
            # the shared grading network keeps one set of batch-norm statistics per input: branch 0 the
            # plain features (Ori, the context vector), branch 1 + l the features attended by lesion l
            self._branch_norms = _branch_batchnorms(self.high, 1 + num_lesions)

    @torch.no_grad()
    def init_attention_from_masks(self, gain: float = 8.0, offset: float = -4.0) -> None:
        """Start every attention map as a sharpened copy of G's mask: channel 0 of f_l becomes
        ReLU(gain m_l) (Eq. 5's weights on the image features zeroed for it), channel 0 of the context
        vector f_high the constant 1 (its 1x1 convolution's weights zeroed, bias 1), and Eq. 6 reads that
        channel with weight 1 and bias ``offset``: alpha_l = sigmoid(gain m_l + offset + the other
        channels' terms, which keep their small random weights). With the defaults alpha is 0.02 where G
        sees no lesion, 0.5 where m_l = 0.5 and 0.98 where m_l = 1, and the attentive features start as
        Lesion(Pretrained)'s mask-weighted ones. Every weight stays trainable."""
        self.to_context.weight[0].zero_()
        self.to_context.bias[0] = 1.0
        for w_low, w_high in zip(self.w_low, self.w_high, strict=True):
            w_low.weight[0].zero_()
            w_low.weight[0, 0] = gain
            w_low.bias[0] = 0.0
            w_high.weight[0, 0] = 1.0
            w_high.bias.fill_(offset)

    def _high(self, features: torch.Tensor, branch: int) -> torch.Tensor:
        """The shared grading network on the features of one branch (its batch-norm statistics)."""
        for bn in getattr(self, "_branch_norms", ()):
            bn.branch = branch
        try:
            return self.high(features)
        finally:
            for bn in getattr(self, "_branch_norms", ()):
                bn.branch = 0

    def forward(self, image: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.input_norm == "imagenet":
            image = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        f_low = self.low(image)
        if not self.attention or masks is None:
            return {"logits": self.classifier_ori(self._high(f_low, 0).mean((2, 3)))}
        if masks.shape[1] != self.num_lesions:
            raise ValueError(f"lesion attention needs B x {self.num_lesions} masks from G, got {tuple(masks.shape)}")
        m = F.interpolate(masks, size=f_low.shape[-2:], mode="bilinear", align_corners=False)
        if self.lesion_features == "masks":  # Lesion(Pretrained): the masks weight the features directly
            vectors = [
                self._high(m[:, lesion : lesion + 1] * f_low, 1 + lesion).mean((2, 3))
                for lesion in range(self.num_lesions)
            ]
            return {"logits": self.classifier(torch.cat(vectors, 1))}
        f_high = self.to_context(self._high(f_low, 0)).mean((2, 3), keepdim=True)  # B x C_low x 1 x 1
        alphas, vectors = [], []
        for lesion in range(self.num_lesions):
            f_l = F.relu(self.w_low[lesion](torch.cat([m[:, lesion : lesion + 1], f_low], 1)))  # Eq. 5
            alpha = torch.sigmoid(self.w_high[lesion](f_l * f_high))  # Eq. 6
            alphas.append(alpha)
            vectors.append(self._high(alpha * f_low, 1 + lesion).mean((2, 3)))  # shared grading network
        return {"logits": self.classifier(torch.cat(vectors, 1)), "alpha": torch.cat(alphas, 1)}

    def pseudo_masks(self, alpha: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The attention maps resized to G's mask size: paper 001's pseudo masks for image-level data."""
        return F.interpolate(alpha, size=size, mode="bilinear", align_corners=False).clamp(0, 1)


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Multi-class focal loss (Lin et al. 2017): -alpha_t (1 - p_t)^gamma log p_t.

    Args:
        logits: ``B x K``.  target: ``B`` class indices.  gamma: focusing parameter (0 = cross-entropy).
        alpha: optional ``K`` class weights.  reduction: ``mean``, ``sum`` or ``none``.
    """
    logp = F.log_softmax(logits, 1).gather(1, target[:, None]).squeeze(1)
    loss = -((1 - logp.exp()).clamp_min(0) ** gamma) * logp
    if alpha is not None:
        loss = loss * alpha.to(loss)[target]
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
