"""Collaborative semi-supervised lesion segmentation and lesion-attentive DR grading (paper 001).

One LightningModule, three stages (section 3.4), each a ``retinalab fit`` config:

* ``segmentation`` (stage 1): the generator G on pixel-annotated images with L_CE (Adam 2e-4,
  beta1 0.5, batch 32, 60 epochs);
* ``grading`` (stage 1): the grading CNN on grades with the focal loss (batch 128, 30 epochs);
* ``joint`` (stage 2): G and the grader start from the stage-1 checkpoints; the lesion attention
  (Eq. 4-6) turns G's masks into attention maps alpha_l, the grader is trained on the attentive
  features, alpha_l become pseudo masks for L_CE on the image-level images, and the discriminator D
  adds L_Adv (Eq. 3: L_Seg = L_Adv + lambda L_CE, lambda = 10), end to end (batch 16, 50 epochs).

Ablations (paper 001, Tables 1-3): ``Ori`` = the ``grading`` stage alone; ``Lesion(Pretrained)`` =
``joint`` with ``semi: false, adversarial: false`` (G stays as pre-trained); ``Lesion(Semi)`` =
``adversarial: false``; ``Lesion(Semi+Adv)`` = the default; ``CE1`` / ``CE2`` = ``generator_block``
``conv`` / ``xception``.

Optimisation of Eq. 3: D maximises L_Adv = E log D(X^P, G(X^P)) + E log(1 - D(X^I, G(X^I))) (it
minimises the binary cross-entropy of real = pixel-annotated, fake = image-level); G minimises
lambda L_CE - E log D(X^I, G(X^I)) (the usual non-saturating form of its side of L_Adv).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch

from ..datasets import LESIONS
from ..metrics.lesions import BinaryDRMetrics, LesionPixelMetrics, grading_metrics
from ..models.lesion_attention import LesionAttentionGrader, focal_loss
from ..models.lesion_discriminator import LesionDiscriminator
from ..models.xception_unet import Block, build_generator
from ..utils.errors import ConfigError
from .collaborative_eval import CollaborativeEvaluation
from .collaborative_losses import (  # noqa: F401 (masked_bce, l_seg: importable from here as before)
    discriminator_loss,
    generator_adversarial_loss,
    l_seg,
    load_part,
    masked_bce,
)
from .pseudo_quality import PseudoMaskQuality, pseudo_targets

Stage = Literal["segmentation", "grading", "joint"]


class CollaborativeTask(CollaborativeEvaluation, pl.LightningModule):
    """Paper 001's collaborative learning (see the module docstring).

    Args:
        stage: ``segmentation``, ``grading`` or ``joint``.
        lesions: lesion channels of G (MA, HE, EX, SE).
        num_classes: grades (5; Messidor has 4).
        generator_block: G's blocks (``xception`` = CE2, ``conv`` = CE1).
        generator_width: G's width multiplier.
        generator_depth: G's encoder levels.
        generator_encoder: instead of the paper's G, an smp U-Net on this encoder (e.g. ``resnet34``,
            ``tu-efficientnet_b0``), from scratch.
        generator_weights: the smp encoder's pretrained weights (smp's tag, e.g. ``imagenet``; Hugging Face
            cache, :mod:`retinalab.weights`); ``None`` (default): from scratch.
        generator_prior: the lesion probability G starts out predicting (its last bias set to the
            logit of it, Lin et al. 2017; default 0.01: lesions cover about 1% of a photograph).
            ``None``: PyTorch's default initialisation (0.5 everywhere), from which G spends its first
            hundreds of steps learning that almost every pixel is background (measured in
            docs/benchmarks.md, "Paper 001 ablations"). Paper 001 does not say how G is initialised.
        discriminator_width: D's width multiplier.
        backbone: the grading CNN, a registered backbone that can grade (timm ResNets), from scratch unless
            ``weights`` or ``pretrained_path``.
        attention: use lesion features in the ``joint`` stage (``False`` keeps Ori's classifier).
        lesion_features: ``attention`` (the lesion attention, Eq. 5-6) or ``masks`` (G's masks weight the
            features, no attention module: ``Lesion(Pretrained)``; needs ``semi: false``, since the pseudo
            masks are the attention maps).
        attention_init: ``default`` or ``mask`` (each attention map starts as a sharpened copy of G's
            mask; ``conf/collaborative/overlays/attention_from_masks.yaml``; see
            :class:`~retinalab.models.lesion_attention.LesionAttentionGrader`). With ``mask`` the stage-1b
            checkpoint's attention weights, which stage 1b never trains, are not loaded over it.
        pseudo_warmup_steps: joint-stage batches before the attention maps start to supervise G as
            pseudo masks (the attention branches are new at stage 2: untrained maps would teach G noise).
        pseudo_threshold: ``None`` (default): the attention maps are soft targets of L_CE; a number:
            maps >= it are lesion, the rest background (paper 001 does not say which it used).
        pseudo_source: ``attention`` (paper 001) or ``truth`` (the ``oracle`` overlay: the masks ``retinalab
            synth`` drew for the graded photographs, ``data.image_level_truth: all``). On synthetic data
            each joint-stage validation and test scores G's masks, the attention maps and the pseudo masks
            against those masks (``<split>/vs_truth/...``, ``<split>/pseudo_masks``; :mod:`.pseudo_quality`).
        pretrained_path: local weights for the grading backbone (the older spelling of a local file
            in ``weights``).
        weights: the grading backbone's pretrained weights: ``imagenet``, ``hf-hub:<org>/<name>`` or a
            local file (:mod:`retinalab.weights`); ``None`` (default): from scratch.
        grader_input_norm: ``imagenet`` / ``none``; default ``imagenet`` with pretrained weights (their
            mean and std), ``none`` without.
        lam: lambda of Eq. 3 (10).
        semi: pseudo masks from the attention maps train G on image-level data (L_CE).
        adversarial: add D and L_Adv.
        end_to_end: the grading loss also reaches G through the masks.
        focal_gamma: gamma of the focal loss.
        accumulate_grad_batches: ``joint`` stage: sum the gradients of this many batches before each
            optimiser step (G, grader and D alike), so batch 16 fits where only 16 / k images do: the
            same effective batch (batch-norm statistics still come from each smaller batch, and G's
            adversarial term sees D as last stepped, where with k = 1 it sees D after this batch's own
            D step). The stage-1 stages optimise automatically: use the Trainer's
            ``accumulate_grad_batches`` there (Lightning refuses it with manual optimisation).
        lr: Adam's learning rate for every network (2e-4).
        beta1: Adam's beta1 (0.5).
        beta2: Adam's beta2 (0.999).
        generator_ckpt: the stage-1 G checkpoint the ``joint`` stage starts from.
        grader_ckpt: the stage-1 grader checkpoint the ``joint`` stage starts from.
        pixel_thresholds: ``None`` (default): pixel AUCs from 28,673 log-spaced score bins with soft
            targets (:class:`retinalab.metrics.lesions.PixelCurve`, exact to 0.05% of a score); an int:
            torchmetrics' linear bins (the earlier default was 200, which cannot rank scores below 1/200).
        num_overlays: images whose lesion maps / attention maps are drawn per validation epoch.
    """

    #: each optimiser step updates one network, so DDP must allow unused parameters: ``--trainer.strategy ddp``
    #: runs as ``ddp_find_unused_parameters_true`` (retinalab.lightning.cli)
    ddp_unused_parameters = True

    def __init__(
        self,
        stage: Stage = "joint",
        lesions: list[str] | None = None,
        num_classes: int = 5,
        generator_block: Block = "xception",
        generator_width: float = 1.0,
        generator_depth: int = 5,
        generator_encoder: str | None = None,
        generator_weights: str | None = None,
        generator_prior: float | None = 0.01,
        discriminator_width: float = 1.0,
        backbone: str = "resnet18",
        attention: bool = True,
        lesion_features: Literal["attention", "masks"] = "attention",
        attention_init: Literal["default", "mask"] = "default",
        pseudo_warmup_steps: int = 0,
        pseudo_threshold: float | None = None,
        pseudo_source: Literal["attention", "truth"] = "attention",
        pretrained_path: str | None = None,
        weights: str | None = None,
        grader_input_norm: Literal["imagenet", "none"] | None = None,
        lam: float = 10.0,
        semi: bool = True,
        adversarial: bool = True,
        end_to_end: bool = True,
        focal_gamma: float = 2.0,
        accumulate_grad_batches: int = 1,
        lr: float = 2e-4,
        beta1: float = 0.5,
        beta2: float = 0.999,
        generator_ckpt: str | None = None,
        grader_ckpt: str | None = None,
        pixel_thresholds: int | None = None,
        num_overlays: int = 2,
    ) -> None:
        super().__init__()
        if stage not in ("segmentation", "grading", "joint"):
            raise ConfigError(f"stage must be 'segmentation', 'grading' or 'joint', got {stage!r}")
        if pseudo_source not in ("attention", "truth"):
            raise ConfigError(f"pseudo_source must be 'attention' or 'truth', got {pseudo_source!r}")
        if pseudo_source == "truth" and not semi:
            raise ConfigError(
                "pseudo_source='truth' (the oracle arm) gives G pseudo masks on the graded photographs: it needs semi: "
                "true"
            )
        if lesion_features == "masks" and semi and attention and pseudo_source == "attention":
            raise ConfigError(
                "lesion_features='masks' (Lesion(Pretrained)) has no attention maps to use as pseudo masks: set semi: "
                "false"
            )
        if pseudo_warmup_steps < 0 or (pseudo_threshold is not None and not 0 < pseudo_threshold < 1):
            raise ConfigError(
                f"pseudo_warmup_steps must be >= 0 and pseudo_threshold in (0, 1), got {pseudo_warmup_steps}, "
                f"{pseudo_threshold}"
            )
        if accumulate_grad_batches < 1:
            raise ConfigError(f"accumulate_grad_batches must be >= 1, got {accumulate_grad_batches}")
        if accumulate_grad_batches > 1 and stage != "joint":
            raise ConfigError(
                f"model.accumulate_grad_batches is for the joint stage (manual optimisation); the {stage} stage "
                f"accumulates with trainer.accumulate_grad_batches"
            )
        self.save_hyperparameters()
        self.lesions = list(lesions or LESIONS)
        self.stage = stage
        self.generator = build_generator(
            generator_block,
            generator_width,
            generator_depth,
            generator_encoder,
            len(self.lesions),
            generator_prior,
            generator_weights,
        )
        self.grader = LesionAttentionGrader(
            num_classes,
            len(self.lesions),
            backbone,
            attention,
            pretrained_path,
            grader_input_norm,
            lesion_features,
            attention_init,
            weights=weights,
        )
        self.use_attention = attention and stage == "joint"
        self.update_generator = stage == "segmentation" or (stage == "joint" and (semi or adversarial))
        self.discriminator = (
            LesionDiscriminator(3, len(self.lesions), discriminator_width) if stage == "joint" and adversarial else None
        )
        if stage == "joint":
            self.automatic_optimization = False
            if generator_ckpt:
                load_part(generator_ckpt, "generator", self.generator, strict=True)
            if grader_ckpt:
                # Lesion(Pretrained) has no attention module: the stage-1b checkpoint's untrained one is left out
                load_part(
                    grader_ckpt,
                    "grader",
                    self.grader,
                    strict=False,
                    ignore=("w_low.", "w_high.", "to_context.")
                    if lesion_features == "masks" or attention_init == "mask"
                    else (),
                )
        self.pixel_metrics = torch.nn.ModuleDict(
            {s: LesionPixelMetrics(self.lesions, pixel_thresholds) for s in ("val", "test")}
        )
        self.grade_metrics = torch.nn.ModuleDict({s: grading_metrics(num_classes) for s in ("val", "test")})
        self.binary_metrics = torch.nn.ModuleDict({s: BinaryDRMetrics() for s in ("val", "test")})
        # Messidor's referable / normal protocol reads DR grades; a two-class target (referable) is binary
        # already, and with it the protocol found no grade >= 2 and logged a referable AUC of 0
        self._binary_protocol = num_classes > 2
        self.pseudo_quality = torch.nn.ModuleDict(
            {s: PseudoMaskQuality(self.lesions, pixel_thresholds) for s in ("val", "test")}
        )
        self._quality_sheets: list[tuple[str, np.ndarray]] = []
        self._overlays: list[tuple[str, np.ndarray]] = []

    # ------------------------------------------------------------------ forward
    def masks(self, image: torch.Tensor) -> torch.Tensor:
        """G's lesion probability maps ``B x L x H x W``."""
        return torch.sigmoid(self.generator(image))

    def grade(self, image: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Grade logits (and attention maps with the lesion attention)."""
        if self.use_attention:
            return self.grader(image, masks if masks is not None else self.masks(image))
        return self.grader(image)

    @property
    def optimizer_steps_per_batch(self) -> int:
        """How far one training batch moves ``trainer.global_step``: 1 in stage 1; in the ``joint``
        stage (manual optimisation) Lightning counts every optimiser's step, so G, the grader and D
        make it 3 for ``Lesion(Semi+Adv)``, 2 for ``Lesion(Semi)`` and 1 for ``Lesion(Pretrained)``.
        ``trainer.max_steps`` for ``n`` joint batches is ``n * optimizer_steps_per_batch`` (divided by
        ``accumulate_grad_batches``: a step is taken every that many batches)."""
        if self.stage != "joint":
            return 1
        return 1 + int(self.update_generator) + int(self.discriminator is not None)

    # ------------------------------------------------------------------ batch-norm recalibration
    def recalibration_modules(self) -> list[torch.nn.Module]:
        """The networks this stage trains (:class:`retinalab.lightning.RecalibrateBatchNorm`): a frozen
        G keeps the statistics it was trained with."""
        if self.stage == "segmentation":
            return [self.generator]
        if self.stage == "grading":
            return [self.grader]
        return [self.grader, *([self.generator] if self.update_generator else [])]

    def recalibration_forward(self, batch: dict[str, Any]) -> None:
        """One training batch through the stage's networks, as in training (no gradients)."""
        if self.stage == "segmentation":
            self.generator(batch["image"])
        elif self.stage == "grading":
            self.grader(batch["image"])
        else:
            if self.update_generator:
                self.generator(batch["pixel"]["image"])
            x = batch["image"]["image"]
            self.grade(x, self.masks(x) if self.use_attention else None)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if self.stage == "segmentation":
            loss = masked_bce(self.generator(batch["image"]), batch["mask"], batch.get("mask_known"))
            self.log("train/loss_ce", loss, prog_bar=True, batch_size=len(batch["image"]))
            return loss
        if self.stage == "grading":
            y = batch["label"]
            logits = self.grader(batch["image"])["logits"]
            loss = focal_loss(logits, y, self.hparams.focal_gamma)
            self.log_dict(
                {"train/loss_cls": loss, "train/acc": (logits.argmax(1) == y).float().mean()},
                prog_bar=True,
                batch_size=len(y),
            )
            return loss
        return self._joint_step(batch, batch_idx)

    def _joint_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        h = self.hparams
        if "pixel" not in batch or "image" not in batch:
            raise ConfigError(
                "the joint stage needs a SegmentationDataModule with image_level_dataset set (batches {'pixel', "
                "'image'})"
            )
        opts = self.optimizers()
        opt_g, opt_c, opt_d = (list(opts) + [None, None])[:3] if isinstance(opts, (list, tuple)) else (opts, None, None)
        if not self.update_generator:
            opt_g, opt_c = None, opt_g
        pb, ib = batch["pixel"], batch["image"]
        xp, sp, kp = pb["image"], pb["mask"], pb.get("mask_known")
        xi, yi = ib["image"], ib["label"]
        if self.update_generator:
            gp, gi = self.generator(xp), self.generator(xi)
        else:
            self.generator.eval()
            with torch.no_grad():
                gp, gi = self.generator(xp), self.generator(xi)
        mp, mi = torch.sigmoid(gp), torch.sigmoid(gi)
        out = (
            self.grader(xi, mi if h.end_to_end and self.update_generator else mi.detach())
            if self.use_attention
            else self.grader(xi)
        )
        loss_cls = focal_loss(out["logits"], yi, h.focal_gamma)
        loss_ce = masked_bce(gp, sp, kp)
        logs = {"train/loss_cls": loss_cls, "train/loss_ce_pixel": loss_ce}
        if (
            h.semi
            and ("alpha" in out or h.pseudo_source == "truth")
            and self.trainer.fit_loop.total_batch_idx >= h.pseudo_warmup_steps
        ):
            pseudo = pseudo_targets(self, out.get("alpha"), ib, gi.shape[-2:]).detach()
            loss_pseudo = masked_bce(gi, pseudo)
            loss_ce = loss_ce + loss_pseudo
            logs["train/loss_ce_pseudo"] = loss_pseudo
        loss_g = h.lam * loss_ce
        # gradient accumulation: every loss is divided by k and the optimisers step (then zero their
        # gradients) on every k-th batch and on the epoch's last
        k = h.accumulate_grad_batches
        step_now = k == 1 or (batch_idx + 1) % k == 0 or self.trainer.is_last_batch
        if self.discriminator is not None:
            self.toggle_optimizer(opt_d)
            d_real, d_fake = self.discriminator(xp, mp.detach()), self.discriminator(xi, mi.detach())
            loss_d = discriminator_loss(d_real, d_fake)
            self.manual_backward(loss_d / k)
            if step_now:
                opt_d.step()
                opt_d.zero_grad()
            self.untoggle_optimizer(opt_d)
            for p in self.discriminator.parameters():
                p.requires_grad_(False)  # G's adversarial term must not update D
            adv = generator_adversarial_loss(self.discriminator(xi, mi))
            for p in self.discriminator.parameters():
                p.requires_grad_(True)
            loss_g = loss_g + adv
            logs |= {
                "train/loss_d": loss_d,
                "train/loss_adv_g": adv,
                "train/l_seg": l_seg(d_real.detach(), d_fake.detach(), loss_ce.detach(), h.lam),
            }
        total = loss_cls + (loss_g if self.update_generator else 0.0)
        self.manual_backward(total / k)
        if step_now:
            for opt in (opt_g, opt_c):
                if opt is not None:
                    opt.step()
                    opt.zero_grad()
        logs["train/acc"] = (out["logits"].argmax(1) == yi).float().mean()
        self.log_dict(logs, prog_bar=True, batch_size=len(yi))

    def configure_optimizers(self):
        h = self.hparams

        def adam(params):
            return torch.optim.Adam(params, lr=h.lr, betas=(h.beta1, h.beta2))

        if self.stage == "segmentation":
            return adam(self.generator.parameters())
        if self.stage == "grading":
            return adam(self.grader.parameters())
        opts = ([adam(self.generator.parameters())] if self.update_generator else []) + [adam(self.grader.parameters())]
        if self.discriminator is not None:
            opts.append(adam(self.discriminator.parameters()))
        return opts
