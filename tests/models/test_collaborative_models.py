"""Paper 001's networks: the Xception U-Net generator G, the lesion discriminator D, the lesion
attention (Eq. 5-6) and the multi-class focal loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from retinalab.models.lesion_attention import LesionAttentionGrader, focal_loss
from retinalab.models.lesion_discriminator import LesionDiscriminator
from retinalab.models.xception_unet import ConvTuple, SeparableConv2d, XceptionTuple, XceptionUNet


@pytest.mark.parametrize("block", ["xception", "conv"])
def test_generator_has_nine_tuples_and_l_sigmoid_maps(block):
    g = XceptionUNet(num_lesions=4, width=0.125, block=block)
    assert g.num_tuples == 9
    tuples = [*g.encoder, *g.decoder]
    assert isinstance(tuples[0], ConvTuple)  # the first encoder tuple: ordinary convolutions
    kinds = {type(t) for t in tuples[1:]}
    assert kinds == ({XceptionTuple} if block == "xception" else {ConvTuple})
    if block == "xception":
        t = tuples[1]
        seps = [m for m in t.body if isinstance(m, SeparableConv2d)]
        assert len(seps) == 2 and seps[0][0].groups == seps[0][0].in_channels and seps[0][0].kernel_size == (3, 3)
        assert t.shortcut[0].kernel_size == (1, 1)
    g.eval()
    x = torch.rand(2, 3, 64, 48)
    out = g(x)
    assert out.shape == (2, 4, 64, 48)
    assert torch.allclose(
        g.predict(x), 1 / (1 + torch.exp(-out)), atol=1e-6
    )  # independent sigmoids, one per lesion map
    with pytest.raises(ValueError, match="divisible by 16"):
        g(torch.rand(1, 3, 40, 40))


def test_generator_widths_follow_unet():
    g = XceptionUNet(width=1.0)
    widths = [t.body[0][1].out_channels if isinstance(t, XceptionTuple) else t[0].out_channels for t in g.encoder]
    assert widths == [64, 128, 256, 512, 1024]


def test_discriminator_takes_image_plus_masks_and_has_five_tuples():
    d = LesionDiscriminator(num_lesions=4, width=0.125)
    assert d.in_channels == 7 and d.features[0][0].in_channels == 7
    assert sum(isinstance(m, ConvTuple) for m in d.features) == 5
    assert sum(isinstance(m, nn.MaxPool2d) for m in d.features) == 5
    out = d(torch.rand(3, 3, 64, 64), torch.rand(3, 4, 64, 64))
    assert out.shape == (3,)
    with pytest.raises(ValueError, match="differ in size"):
        d(torch.rand(1, 3, 64, 64), torch.rand(1, 4, 32, 32))


def test_lesion_attention_shapes_follow_eq_5_and_6():
    torch.manual_seed(0)
    m = LesionAttentionGrader(num_classes=5, num_lesions=4, backbone="resnet18").eval()
    with torch.no_grad():  # larger weights than at initialisation, so that lesion 1's map varies over the image
        m.w_high[1].weight.mul_(300)
        m.w_low[1].weight[:, 0].mul_(30)
    x, masks = torch.rand(2, 3, 128, 128), torch.rand(2, 4, 128, 128)
    out = m(x, masks)
    assert out["logits"].shape == (2, 5)
    assert out["alpha"].shape == (2, 4, 32, 32)
    # Eq. 5: W_l^low maps concat(m_l, f_low) (1 + C_low channels) to C_low; Eq. 6: W_l^high to one map
    assert m.w_low[0].in_channels == 64 + 1 and m.w_low[0].out_channels == 64
    assert m.w_high[2].in_channels == 64 and m.w_high[2].out_channels == 1
    assert m.to_context.in_channels == 512 and m.to_context.out_channels == 64
    assert m.classifier.in_features == 4 * 512
    # Eq. 5-6 for lesion 1, written out: the 1x1 convolutions as sums over channels with the raw weights
    f_low = m.low(x)
    top = m.high(f_low)  # B x 512 x 4 x 4
    f_high = (
        torch.einsum("oc,bchw->bohw", m.to_context.weight[:, :, 0, 0], top) + m.to_context.bias[None, :, None, None]
    ).mean((2, 3))
    m1 = F.interpolate(masks, size=(32, 32), mode="bilinear", align_corners=False)[:, 1]  # B x 32 x 32
    w, b = m.w_low[1].weight[:, :, 0, 0], m.w_low[1].bias  # 64 x 65: column 0 weighs the mask, the rest f_low
    f_1 = torch.relu(
        w[:, 0][None, :, None, None] * m1[:, None]
        + torch.einsum("oc,bchw->bohw", w[:, 1:], f_low)
        + b[None, :, None, None]
    )
    v, c = m.w_high[1].weight[0, :, 0, 0], m.w_high[1].bias[0]
    alpha1 = 1 / (1 + torch.exp(-(torch.einsum("c,bchw->bhw", v, f_1 * f_high[:, :, None, None]) + c)))
    assert torch.allclose(out["alpha"][:, 1], alpha1, atol=1e-5)
    assert alpha1.std() > 0.02  # a map, not a constant
    assert m.pseudo_masks(out["alpha"], (128, 128)).shape == (2, 4, 128, 128)
    with pytest.raises(ValueError, match="masks"):
        m(x, masks[:, :3])
    assert set(m(x)) == {"logits"}  # without masks: the plain grading CNN (stage-1 pre-training)


def test_ori_baseline_has_no_attention():
    m = LesionAttentionGrader(num_classes=5, backbone="resnet18", attention=False).eval()
    out = m(torch.rand(1, 3, 64, 64))
    assert set(out) == {"logits"} and out["logits"].shape == (1, 5)
    with pytest.raises(ValueError, match="choose one of"):
        LesionAttentionGrader(backbone="vgg11")


def test_focal_loss_against_the_formula():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-2.0, 3.0, 0.0]])
    y = torch.tensor([0, 2, 0])
    p = torch.softmax(logits, 1)[torch.arange(3), y]
    expected = (-((1 - p) ** 2) * torch.log(p)).mean()
    assert torch.allclose(focal_loss(logits, y, gamma=2.0), expected)
    assert torch.allclose(focal_loss(logits, y, gamma=0.0), F.cross_entropy(logits, y))
    w = torch.tensor([0.25, 1.0, 2.0])
    assert torch.allclose(focal_loss(logits, y, 2.0, w, "none"), -((1 - p) ** 2) * torch.log(p) * w[y])


def test_generator_can_use_an_smp_encoder_instead():
    from retinalab.models.xception_unet import build_generator

    g = build_generator(encoder="resnet18", num_lesions=4).eval()
    assert not isinstance(g, XceptionUNet) and g(torch.rand(1, 3, 64, 64)).shape == (1, 4, 64, 64)
    assert isinstance(build_generator("conv", 0.125), XceptionUNet)
    with pytest.raises(ValueError, match="unknown generator encoder"):
        build_generator(encoder="no-such-encoder")


@pytest.mark.parametrize("encoder", [None, "resnet18"])
def test_generator_prior_sets_the_initial_lesion_probability(encoder):
    """With ``prior`` every output logit starts at logit(prior) plus the head's weighted features: the
    bias is exactly logit(prior), and the predicted probabilities of a fresh G centre on it."""
    import math

    from retinalab.models.xception_unet import build_generator

    torch.manual_seed(0)
    g = build_generator("xception", 0.125, encoder=encoder, prior=0.01)
    head = g.head if encoder is None else g.segmentation_head[0]
    assert torch.allclose(head.bias, torch.full_like(head.bias, math.log(0.01 / 0.99)))
    with torch.no_grad():
        p = torch.sigmoid(g.eval()(torch.rand(2, 3, 64, 64)))
    assert 0.001 < p.median().item() < 0.05
    default = build_generator("xception", 0.125, encoder=encoder)
    head = default.head if encoder is None else default.segmentation_head[0]
    assert head.bias.abs().max().item() < 1.0  # PyTorch's own initialisation: probabilities near 0.5
    with pytest.raises(ValueError, match="prior must be in"):
        build_generator(prior=1.0)


@pytest.mark.parametrize("lesion_features", ["masks", "attention"])
def test_each_lesion_branch_keeps_its_own_batch_norm_statistics(lesion_features):
    """The shared grading network sees the plain features and one attended copy per lesion, each
    distributed differently (here: masks of 1, 0.3, 0.03 and 0.003). With statistics re-estimated on a
    batch (as RecalibrateBatchNorm does), eval mode on that batch gives what train mode (batch
    statistics) gives; with one set of statistics for all branches (the earlier grader) it does not."""
    from retinalab.models.lesion_attention import BranchBatchNorm2d, LesionAttentionGrader

    torch.manual_seed(0)
    g = LesionAttentionGrader(5, 4, "resnet18", attention=True, lesion_features=lesion_features)
    x = torch.rand(8, 3, 64, 64)
    masks = torch.stack([torch.full((8, 64, 64), v) for v in (1.0, 0.3, 0.03, 0.003)], 1) * (
        torch.rand(8, 4, 64, 64) > 0.5
    )
    norms = [m for m in g.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert sum(isinstance(m, BranchBatchNorm2d) for m in norms) > 10

    def recalibrate_and_compare(model) -> float:
        with torch.no_grad():
            for m in norms:
                m.reset_running_stats()
                m.momentum = None
            model.train()
            batch_stats = model(x, masks)["logits"]  # also accumulates the running statistics
            model.eval()
            return (model(x, masks)["logits"] - batch_stats).abs().max().item() / batch_stats.abs().max().item()

    own = recalibrate_and_compare(g)
    for m in norms:  # one set of statistics shared by every branch
        if isinstance(m, BranchBatchNorm2d):
            m.branch, m.branches = 0, 1
            m.forward = lambda t, m=m: torch.nn.BatchNorm2d.forward(m, t)
    shared = recalibrate_and_compare(g)
    # (not 0: training normalises with the biased variance, the running statistics keep the unbiased one)
    assert own < 0.05 and shared > 0.2, (own, shared)


def test_a_plain_grader_checkpoint_seeds_every_branchs_statistics():
    """Stage 2 starts from the stage-1b grader, which has one set of statistics: every branch starts
    from it, and a stage-2 state dict round-trips with its per-branch statistics."""
    from retinalab.models.lesion_attention import LesionAttentionGrader

    torch.manual_seed(0)
    ori = LesionAttentionGrader(5, 4, "resnet18", attention=False)
    ori.train()
    with torch.no_grad():
        ori(torch.rand(4, 3, 64, 64))  # running statistics away from their initial values
    stage2 = LesionAttentionGrader(5, 4, "resnet18", attention=True)
    missing, unexpected = stage2.load_state_dict(ori.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("w_low", "w_high", "to_context", "classifier.")) for k in missing)
    sd = stage2.state_dict()
    base = ori.state_dict()["high.0.0.bn1.running_mean"]
    assert all(torch.equal(sd[f"high.0.0.bn1.running_mean_{b}"], base) for b in range(1, 5))
    again = LesionAttentionGrader(5, 4, "resnet18", attention=True)
    again.load_state_dict(sd)  # strict: every per-branch buffer is there


def test_focal_loss_reductions_and_class_weights_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    target = torch.tensor([0, 2])
    p = torch.softmax(logits.double(), 1)[torch.arange(2), target]
    by_hand = -((1 - p) ** 2) * torch.log(p)
    assert torch.allclose(focal_loss(logits, target, reduction="none").double(), by_hand, atol=1e-6)
    assert float(focal_loss(logits, target, reduction="sum")) == pytest.approx(float(by_hand.sum()), rel=1e-5)
    assert float(focal_loss(logits, target)) == pytest.approx(float(by_hand.mean()), rel=1e-5)
    alpha = torch.tensor([0.25, 1.0, 4.0], dtype=torch.float64)  # class weights in another dtype than the logits
    weighted = focal_loss(logits, target, alpha=alpha, reduction="none")
    assert weighted.dtype == torch.float32 and torch.allclose(
        weighted.double(), by_hand * torch.tensor([0.25, 4.0], dtype=torch.float64), atol=1e-6
    )
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none', got 'max'"):
        focal_loss(logits, target, reduction="max")


def test_pseudo_masks_are_the_attention_maps_resized_bilinearly():
    """Paper 001's pseudo masks: attention maps resized to G's mask size (half-pixel centres, as
    F.interpolate with align_corners=False), values kept in [0, 1]. Worked out by hand for 1 x 2 -> 1 x 4."""
    grader = LesionAttentionGrader(num_lesions=1, backbone="resnet18")
    alpha = torch.tensor([[[[0.0, 1.0]]]])
    out = grader.pseudo_masks(alpha, (1, 4))
    assert out.flatten().tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])


def test_branch_batchnorm_converts_updates_and_resets_each_branch_apart():
    """`from_batchnorm` keeps the layer's eps and momentum and copies its statistics to every branch; a
    training batch on branch 2 moves only branch 2's statistics, by the momentum (worked out here from
    the batch's own mean and variance); evaluation on a branch normalises with that branch's statistics
    and the layer's eps; `reset_running_stats` resets every branch."""
    from retinalab.models.lesion_attention import BranchBatchNorm2d

    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, eps=1e-2, momentum=0.3)
    bn(torch.randn(8, 3, 4, 4) * 2 + 1)  # non-trivial base statistics
    bn.weight.data = torch.tensor([1.5, -0.5, 2.0])
    bn.bias.data = torch.tensor([0.1, 0.2, -0.3])
    new = BranchBatchNorm2d.from_batchnorm(bn, branches=3)
    assert (new.eps, new.momentum) == (1e-2, 0.3)
    base_mean, base_var = bn.running_mean.clone(), bn.running_var.clone()
    for b in (1, 2):
        assert torch.equal(getattr(new, f"running_mean_{b}"), base_mean) and torch.equal(
            getattr(new, f"running_var_{b}"), base_var
        )
    x = torch.randn(8, 3, 4, 4) + 5
    new.train()
    new.branch = 2
    new(x)
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)
    assert torch.allclose(new.running_mean_2, 0.7 * base_mean + 0.3 * mean, atol=1e-6)
    assert torch.allclose(new.running_var_2, 0.7 * base_var + 0.3 * var, atol=1e-5)
    assert torch.equal(new.running_mean, base_mean) and torch.equal(new.running_mean_1, base_mean)
    assert (
        int(new.num_batches_tracked_2) == 2 and int(new.num_batches_tracked_1) == int(new.num_batches_tracked) == 1
    )  # copied, then counted
    new.eval()
    new.running_var_1.fill_(1e-3)  # small enough that eps matters
    new.branch = 1
    y = new(x)
    by_hand = (x - base_mean[None, :, None, None]) / torch.sqrt(torch.tensor(1e-3 + 1e-2)) * new.weight[
        None, :, None, None
    ] + new.bias[None, :, None, None]
    assert torch.allclose(y, by_hand, rtol=1e-5, atol=1e-5)
    two = BranchBatchNorm2d.from_batchnorm(bn, branches=2)  # the smallest layer with a second branch
    for layer, names in ((new, ("", "_1", "_2")), (two, ("", "_1"))):
        layer.reset_running_stats()
        for b in names:
            assert torch.equal(getattr(layer, f"running_mean{b}"), torch.zeros(3)) and torch.equal(
                getattr(layer, f"running_var{b}"), torch.ones(3)
            )
            assert int(getattr(layer, f"num_batches_tracked{b}")) == 0


def test_grader_options_input_norm_pretrained_path_and_lesion_count(tmp_path):
    """`input_norm="imagenet"` feeds (x - ImageNet mean) / std, with the constants typed here, and is the
    default only with `pretrained_path`; `pretrained_path` loads that local file's weights into the
    backbone (a missing file is named); `num_lesions` sets the branches and the masks it needs; bad
    option values are refused."""
    import timm

    from retinalab.models.lesion_attention import LesionAttentionGrader

    torch.manual_seed(0)
    plain = LesionAttentionGrader(3, 2, "resnet18", attention=False)
    normed = LesionAttentionGrader(3, 2, "resnet18", attention=False, input_norm="imagenet")
    normed.load_state_dict(plain.state_dict())
    plain.eval(), normed.eval()
    x = torch.rand(2, 3, 64, 64)
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    with torch.no_grad():
        assert torch.allclose(normed(x)["logits"], plain((x - mean) / std)["logits"], atol=1e-5)
        assert not torch.allclose(normed(x)["logits"], plain(x)["logits"], atol=1e-3)
    assert plain.input_norm == "none"
    # a local weight file (a resnet18 with its own random weights)
    source = timm.create_model("resnet18", pretrained=False, num_classes=0)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    loaded = LesionAttentionGrader(3, 2, "resnet18", attention=True, pretrained_path=str(tmp_path / "r18.pth"))
    assert loaded.input_norm == "imagenet"
    assert torch.equal(loaded.low[0].weight, source.conv1.weight) and not torch.equal(
        plain.low[0].weight, source.conv1.weight
    )
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        LesionAttentionGrader(3, 2, "resnet18", pretrained_path=str(tmp_path / "missing.pth"))
    # two lesion branches: the classifier reads 2 feature vectors, the shared grading network keeps
    # statistics for 3 inputs (plain, lesion 1, lesion 2), and 4 masks are refused
    assert loaded.classifier.in_features == 2 * loaded.classifier_ori.in_features and len(loaded.w_low) == 2
    keys = loaded.state_dict().keys()
    assert any(k.endswith("running_mean_2") for k in keys) and not any(k.endswith("running_mean_3") for k in keys)
    assert not {"mean", "std"} & set(keys)  # the ImageNet constants are not saved: checkpoints load either way
    assert loaded(x, torch.rand(2, 2, 64, 64))["alpha"].shape == (2, 2, 16, 16)
    with pytest.raises(ValueError, match="2 masks"):
        loaded(x, torch.rand(2, 4, 64, 64))
    for bad in ({"lesion_features": "pixels"}, {"input_norm": "batch"}, {"backbone": "vgg16"}):
        with pytest.raises(ValueError):
            LesionAttentionGrader(3, 2, **{"backbone": "resnet18", **bad})


def test_attention_from_masks_starts_each_map_as_a_sharpened_copy_of_the_mask(tmp_path):
    """attention_init: mask (issue 31): alpha_l = sigmoid(8 m_l - 4) up to the other channels' small
    terms, so the maps follow G's masks from the first batch; a joint task keeps that start instead of
    loading the stage-1b checkpoint's (never trained) attention weights over it."""
    torch.manual_seed(0)
    grader = LesionAttentionGrader(5, 4, "resnet18", attention_init="mask").eval()
    masks = torch.zeros(2, 4, 64, 64)
    masks[:, :, 16:48, 16:48] = 1.0  # a lesion block covering whole f_low cells
    masks[1, 2] = 0.5
    with torch.no_grad():
        alpha = grader(torch.rand(2, 3, 64, 64), masks)["alpha"]
    expected = torch.sigmoid(8 * F.interpolate(masks, size=alpha.shape[-2:], mode="bilinear", align_corners=False) - 4)
    assert (alpha - expected).abs().max() < 0.1
    assert alpha[0, 0, 6, 6] > 0.9 and alpha[0, 0, 0, 0] < 0.1 and abs(float(alpha[1, 2, 0, 0]) - 0.5) < 0.1
    with pytest.raises(ValueError, match="attention_init must be"):
        LesionAttentionGrader(5, 4, "resnet18", attention_init="zeros")
    from retinalab.tasks import CollaborativeTask

    tiny = dict(generator_width=0.0625, discriminator_width=0.0625, backbone="resnet18")
    stage1b = CollaborativeTask(stage="grading", **tiny)
    torch.save({"state_dict": stage1b.state_dict()}, tmp_path / "grading.ckpt")
    joint = CollaborativeTask(stage="joint", grader_ckpt=str(tmp_path / "grading.ckpt"), attention_init="mask", **tiny)
    assert joint.grader.w_low[0].weight[0, 0, 0, 0] == 8.0 and joint.grader.to_context.bias[0] == 1.0
    assert torch.equal(joint.grader.low[0].weight, stage1b.grader.low[0].weight)  # the rest of the grader is stage 1b's
    default = CollaborativeTask(stage="joint", grader_ckpt=str(tmp_path / "grading.ckpt"), **tiny)
    assert torch.equal(default.grader.w_low[0].weight, stage1b.grader.w_low[0].weight)
