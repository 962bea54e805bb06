"""Conv-large shapes and parameter count (Table 3 of paper 000), data init, image-level metric."""

from __future__ import annotations

import copy

import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from retinalab.metrics import ImageLevelScores
from retinalab.models import ConvLarge, build_patch_model


def expected_params(c1=96, c2=192, k=2):
    conv = lambda cin, cout, ks=3: cin * cout * ks * ks + cout + cout  # weight + bias + weight-norm g  # noqa: E731
    return conv(3, c1) + 2 * conv(c1, c1) + conv(c1, c2) + 4 * conv(c2, c2) + 2 * conv(c2, c2, 1) + c2 * k + k + k


def test_convlarge_matches_table3():
    m = ConvLarge()
    assert sum(p.numel() for p in m.parameters()) == expected_params()
    x = torch.randn(5, 3, 32, 32)
    assert m(x).shape == (5, 2) and m.features(x).shape == (5, 192)
    convs = [mod for mod in m.body if isinstance(mod, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96] * 3 + [192] * 7
    assert [c.stride[0] for c in convs] == [1, 1, 2, 1, 1, 2, 2, 2, 1, 1]
    assert [c.padding[0] for c in convs] == [1] * 6 + [0] * 4
    assert all(hasattr(c, "parametrizations") for c in convs)
    with pytest.raises(ValueError, match="at least 28x28"):
        m(torch.randn(1, 3, 16, 16))
    small = ConvLarge(width=0.25, num_classes=3)
    assert small(x).shape == (5, 3) and small.num_features == 48


def test_convlarge_deepcopies_and_data_init_normalises():
    m = ConvLarge(width=0.25)
    copy.deepcopy(m)  # parametrizations.weight_norm survives deep copies (EMA, checkpoints)
    x = torch.rand(256, 3, 32, 32) * 2 - 1
    m.eval()
    before = m(x).std().item()
    m.data_init(x)
    out = m(x)
    assert before < 0.1  # N(0, 0.05) init shrinks the signal
    assert out.std(0).mean().item() == pytest.approx(1.0, abs=0.1) and out.mean(0).abs().max() < 0.1


def test_networks_train_in_channels_last_layout_and_compute_the_same_function(monkeypatch):
    """conv-large, its generator, LeNet and paper 001's G (Xception U-Net) and D keep their 4-d weights in
    channels-last layout and convert their inputs (retinalab/models/layout.py: faster on the CPU); the
    function they compute, their gradients and their state_dict are those of the plain NCHW network with
    the same weights."""
    from retinalab.models import layout
    from retinalab.models.generator import PatchGenerator
    from retinalab.models.lenet import LeNet
    from retinalab.models.lesion_discriminator import LesionDiscriminator
    from retinalab.models.xception_unet import XceptionUNet

    cl = torch.channels_last
    gen = torch.Generator().manual_seed(0)
    x, img = torch.rand(6, 3, 32, 32, generator=gen), torch.rand(3, 3, 32, 32, generator=gen)
    # (network, inputs, gradient tolerance relative to the gradient's largest entry: G's batch-norm
    # statistics over a few images sum in another order, and its gradients reach ~50 with this loss)
    cases = (
        (lambda: ConvLarge(width=0.125, dropout_in=0.0, dropout=0.0), (x,), False),
        (lambda: LeNet(in_size=32), (x,), False),
        (lambda: PatchGenerator(width=0.125).eval(), (torch.rand(6, 100, generator=gen),), False),
        (lambda: XceptionUNet(width=0.125, depth=3), (img,), True),  # training mode: batch statistics
        (lambda: LesionDiscriminator(width=0.125, tuples=3), (img, torch.rand(3, 4, 32, 32, generator=gen)), True),
    )
    for make, inp, relative in cases:
        torch.manual_seed(0)
        fast = make()
        convs = [m for m in fast.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
        assert convs and all(t.dim() != 4 or t.is_contiguous(memory_format=cl) for t in fast.parameters())
        with monkeypatch.context() as m:
            m.setattr(layout, "ENABLED", False)
            torch.manual_seed(0)
            plain = make()
            assert all(t.is_contiguous() for t in plain.parameters())
            out_plain = plain(*inp)
            out_plain.square().sum().backward()
        out_fast = fast(*inp)
        out_fast.square().sum().backward()
        if out_fast.dim() == 4:
            assert out_fast.is_contiguous(memory_format=cl)
        assert torch.allclose(out_fast, out_plain, atol=1e-5, rtol=1e-4)
        for (name, a), b in zip(fast.named_parameters(), plain.parameters(), strict=True):
            atol = 1e-5 * float(b.grad.abs().max()) if relative else 1e-5
            assert torch.allclose(a.grad, b.grad, atol=atol, rtol=1e-3), name
        # a checkpoint of one loads into the other, values unchanged
        state = {k: v.clone() for k, v in fast.state_dict().items()}
        plain.load_state_dict(state)
        assert all(torch.equal(plain.state_dict()[k], v) for k, v in state.items())


def test_pretrained_weights_come_from_a_local_file(tmp_path):
    import timm

    source = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "imagenet_resnet18.pth")
    model = build_patch_model("resnet18", num_classes=2, pretrained_path=str(tmp_path / "imagenet_resnet18.pth"))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.out_features == 2
    with pytest.raises(FileNotFoundError, match="missing.pth' does not exist"):
        build_patch_model("resnet18", pretrained_path=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="only for the backbones that take them"):
        build_patch_model("convnet", pretrained_path=str(tmp_path / "imagenet_resnet18.pth"))


def test_factory_lists_options():
    with pytest.raises(ValueError, match="choose one of"):
        build_patch_model("vgg")
    assert build_patch_model("resnet18")(torch.randn(2, 3, 32, 32)).shape == (2, 2)


def test_image_level_scores_hand_computed():
    m = ImageLevelScores()
    # image 7: patches p = .9, .8 (one diseased); image 3: .1, .2 (healthy); image 5: .5, .4 (diseased)
    m.update(torch.tensor([0.9, 0.1, 0.5]), torch.tensor([1, 0, 0]), torch.tensor([7, 3, 5]), torch.tensor([0, 0, 0]))
    m.update(torch.tensor([0.8, 0.2, 0.4]), torch.tensor([0, 0, 1]), torch.tensor([7, 3, 5]), torch.tensor([1, 1, 1]))
    # a patch served twice (DistributedSampler padding) is counted once
    m.update(torch.tensor([0.9]), torch.tensor([1]), torch.tensor([7]), torch.tensor([0]))
    images, score, label = m.scores()
    assert images.tolist() == [3, 5, 7]
    assert torch.allclose(score, torch.tensor([0.3, 0.9, 1.7]))
    assert label.tolist() == [0, 1, 1]
    assert m.compute().item() == pytest.approx(binary_auroc(score, label).item()) == 1.0
    # sums of many patch probabilities (here 40-42) must not be squashed into ties by a sigmoid
    big = ImageLevelScores()
    for img, (p, t) in enumerate([(0.62, 0), (0.64, 1), (0.66, 1)]):
        for j in range(64):
            big.update(torch.tensor([p]), torch.tensor([t if j == 0 else 0]), torch.tensor([img]), torch.tensor([j]))
    assert big.compute().item() == 1.0
    from retinalab.tasks.base import youden_threshold

    _, s, lab = big.scores()
    thr = youden_threshold(s, lab)
    assert s[0] < thr <= s[1]  # separates the healthy image from the diseased ones, in sum units
    single = ImageLevelScores()
    single.update(torch.tensor([0.2]), torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
    assert torch.isnan(single.compute())


def test_image_level_scores_by_hand():
    """Paper 000's image score (sum of patch probabilities), worked out by hand on 3 images: patches
    arrive in two batches, image 4's patch 1 twice (a DDP sampler's padding: counted once, first copy)."""
    from retinalab.metrics.image_level import ImageLevelScores, _unique_first, image_auroc, to_unit

    m = ImageLevelScores()
    m.update(torch.tensor([0.9, 0.8, 0.1]), torch.tensor([1, 0, 0]), torch.tensor([4, 4, 2]), torch.tensor([0, 1, 0]))
    m.update(
        torch.tensor([0.7, 0.2, 0.3, 0.6]),
        torch.tensor([0, 0, 0, 0]),
        torch.tensor([4, 2, 9, 9]),
        torch.tensor([1, 2, 0, 2]),
    )
    images, score, label = m.scores()
    assert images.tolist() == [2, 4, 9]
    assert score.tolist() == pytest.approx([0.1 + 0.2, 0.9 + 0.8, 0.3 + 0.6])
    assert label.tolist() == [0, 1, 0]
    assert float(m.compute()) == pytest.approx(1.0)  # the one diseased image has the largest score
    rows, probs, targets = m.per_image()
    assert rows.tolist() == [2, 4, 9]
    expected = [[0.1, float("nan"), 0.2], [0.9, 0.8, float("nan")], [0.3, float("nan"), 0.6]]
    assert torch.allclose(probs, torch.tensor(expected), equal_nan=True)
    assert targets.tolist() == [[0, -1, 0], [1, 0, -1], [0, -1, 0]]
    # sums of many probabilities (64 patches) are not squashed into ties by torchmetrics' sigmoid
    big = torch.tensor([40.0, 35.0, 50.0, 45.0])
    y = torch.tensor([0, 0, 1, 1])
    assert float(image_auroc(big, y)) == pytest.approx(1.0)
    assert float(image_auroc(torch.tensor([40.0, 46.0, 45.0, 50.0]), y)) == pytest.approx(0.75)  # 3 of 4 pairs ordered
    assert torch.isnan(image_auroc(big, torch.zeros(4, dtype=torch.long)))
    scaled, scale = to_unit(big)
    assert scale == 50.0 and scaled.tolist() == pytest.approx([0.8, 0.7, 1.0, 0.9])
    assert to_unit(torch.zeros(0))[1] == 1.0 and to_unit(torch.zeros(2))[0].tolist() == [0.0, 0.0]
    small, scale = to_unit(torch.tensor([0.5, 0.25]))  # sums below 1 (few patches) are scaled up too
    assert scale == 0.5 and small.tolist() == [1.0, 0.5]
    assert to_unit(torch.tensor([-1.0, 2.0]))[0].tolist() == [0.0, 1.0]  # kept in [0, 1]
    uniq, first = _unique_first(torch.tensor([5, 3, 5, 3, 7]))
    assert uniq.tolist() == [3, 5, 7] and first.tolist() == [1, 0, 4]
    empty = ImageLevelScores()  # a rank that saw no image: empty tables and an undefined AUROC, not a crash
    assert [tuple(t.shape) for t in empty.per_image()] == [(0,), (0, 0), (0, 0)] and torch.isnan(empty.compute())


def test_localisation_auroc_is_exact_even_for_faint_heatmaps():
    """The pixel AUROC of a heatmap equals the rank-based AUROC, also when every heat value is tiny
    (a patch classifier that is sure nothing is a lesion still ranks the pixels): with torchmetrics'
    200 linear bins those all fall in the first bin and score 0.5."""
    import numpy as np

    from retinalab.metrics.bootstrap import exact_auroc
    from retinalab.viz import localisation_auroc

    rng = np.random.default_rng(0)
    mask = rng.random((32, 32)) < 0.1
    heat = (rng.random((32, 32)) + mask) / 2
    assert localisation_auroc(heat.astype(np.float32), mask) == pytest.approx(
        exact_auroc(heat.ravel(), mask.ravel()), abs=1e-6
    )
    faint = (0.001 + 0.002 * mask).astype(np.float32)  # all below 0.005, perfectly separated
    assert localisation_auroc(faint, mask) == pytest.approx(1.0)
    assert localisation_auroc(faint, mask, thresholds=200) == pytest.approx(0.5)  # the binned failure, kept reachable
    assert np.isnan(localisation_auroc(heat, np.zeros_like(mask)))
