"""Expected gradient length (paper 002, Eq. 1): the fast paths equal the naive loop to 1e-4."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from retinalab.active import egl, egl_naive, score_pool
from retinalab.models.lenet import LeNet


def trained_lenet(k: int, seed: int = 0) -> LeNet:
    """A LeNet after some SGD steps on a separable toy problem (non-trivial ReLU patterns, confident p)."""
    torch.manual_seed(seed)
    m = LeNet(num_classes=k)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    x = torch.randn(64, 3, 48, 48)
    y = torch.randint(0, k, (64,))
    x[:, 0] += y[:, None, None].float()  # class shifts the red channel
    for _ in range(15):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    return m


@pytest.mark.parametrize("k", [2, 5])
@pytest.mark.parametrize("scope", ["fc", "last", "all"])
@pytest.mark.parametrize("trained", [False, True])
def test_fast_egl_equals_naive_loop(k, scope, trained):
    torch.manual_seed(1)
    m = trained_lenet(k) if trained else LeNet(num_classes=k)
    x = torch.randn(6, 3, 48, 48)
    fast, probs = egl(m, x, scope)
    ref = egl_naive(m, x, scope)
    assert torch.allclose(probs.sum(1), torch.ones(6))
    rel = ((fast - ref).abs() / ref.abs().clamp_min(1e-12)).max().item()
    assert rel < 1e-4, rel


@pytest.mark.parametrize("act", [torch.nn.LeakyReLU(0.1), torch.nn.Identity()])
def test_fast_egl_through_leaky_relu_and_identity_equals_naive_loop(act):
    """The closed form back-propagates through the activation between the fully connected layers:
    LeakyReLU passes ``negative_slope`` of the error where the pre-activation is negative (about half
    the units here), the identity all of it. An activation it has no derivative for is refused."""
    torch.manual_seed(2)
    m = LeNet(num_classes=3, conv_channels=(4, 8), hidden=16)
    m.act = act
    x = torch.randn(6, 3, 48, 48)
    z = m.fc1(m.features(x))
    assert (z < 0).float().mean() > 0.2  # the negative side is exercised
    fast, _ = egl(m, x, "fc")
    ref = egl_naive(m, x, "fc")
    assert torch.allclose(fast, ref, rtol=1e-4, atol=1e-7)
    m.act = torch.nn.Tanh()
    with pytest.raises(TypeError, match="not Tanh"):
        egl(m, x, "fc")


def test_fast_egl_at_a_relu_pre_activation_of_exactly_zero_equals_autograd():
    """A hidden unit whose incoming weights and bias are zero has a pre-activation of exactly 0 for
    every input; autograd takes ReLU's derivative there as 0, so no gradient reaches that unit's
    weights, and the closed form must do the same (with a derivative of 1 at 0 it would not)."""
    torch.manual_seed(3)
    m = LeNet(num_classes=3, conv_channels=(4, 8), hidden=16)
    with torch.no_grad():
        m.fc1.weight[:5] = 0
        m.fc1.bias[:5] = 0
    x = torch.randn(6, 3, 48, 48)
    assert (m.fc1(m.features(x))[:, :5] == 0).all()
    fast, _ = egl(m, x, "fc")
    ref = egl_naive(m, x, "fc")
    assert torch.allclose(fast, ref, rtol=1e-4, atol=1e-7)


#: each scope's parameters, named here by hand (egl_naive and the fast paths share egl._scope_params)
SCOPE_PARAMS = {"fc": ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"], "last": ["fc2.weight", "fc2.bias"]}


@pytest.mark.parametrize("scope", ["fc", "last", "all"])
def test_egl_covers_the_scopes_parameters_named_by_hand(scope):
    """Eq. 1 with the parameter list chosen independently of the code under test: a wrong scope in
    egl._scope_params (say conv layers in `fc`, or fc1 missing from it) would pass the test above."""
    m = trained_lenet(3)
    names = SCOPE_PARAMS.get(scope, [n for n, _ in m.named_parameters()])
    params = [dict(m.named_parameters())[n] for n in names]
    x = torch.randn(4, 3, 48, 48)
    ref = []
    for xi in x:
        logits = m(xi[None])
        p = logits.softmax(1)[0].detach()
        grads = [
            torch.autograd.grad(F.cross_entropy(logits, torch.tensor([j])), params, retain_graph=True) for j in range(3)
        ]
        ref.append(sum(float(p[j]) * float(torch.sqrt(sum((g**2).sum() for g in grads[j]))) for j in range(3)))
    fast, _ = egl(m, x, scope)
    assert torch.allclose(fast.double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-4)


def test_scopes_are_nested():
    m = trained_lenet(2)
    x = torch.randn(8, 3, 48, 48)
    last, fc, everything = (egl(m, x, s)[0] for s in ("last", "fc", "all"))
    # more parameters, larger gradient norm (per class, hence in expectation)
    assert (last <= fc + 1e-6).all() and (fc <= everything + 1e-6).all()


def test_pool_scoring_is_batched_and_restores_mode():
    m = trained_lenet(2)
    m.train()
    x = torch.randn(50, 3, 48, 48)
    whole = egl(m, x, "fc")[0]
    pooled = score_pool(m, (x[i : i + 16] for i in range(0, 50, 16)), "fc")
    assert torch.allclose(whole, pooled, rtol=1e-5) and m.training
    with pytest.raises(ValueError, match="scope"):
        egl(m, x, "conv")


def test_lenet_shapes():
    m = LeNet()
    assert m.num_features == 50 * 9 * 9 and m(torch.randn(2, 3, 48, 48)).shape == (2, 2)
    with pytest.raises(ValueError, match="too small"):
        LeNet(in_size=12)


@pytest.mark.parametrize("k", [2, 5])
def test_all_scope_methods_agree_and_fall_back_for_other_layers(k):
    """The layerwise method and torch.func give the same exact EGL; a BatchNorm network falls back to func."""
    torch.manual_seed(2)
    m = trained_lenet(k)
    x = torch.randn(5, 3, 48, 48)
    layerwise, _ = egl(m, x, "all", method="layerwise", chunk=2)
    func, _ = egl(m, x, "all", method="func", chunk=3)
    assert torch.allclose(layerwise, func, rtol=1e-4)
    bn = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 46 * 46, k),
    )
    bn.eval()
    auto, _ = egl(bn, x, "all")
    assert torch.allclose(auto, egl_naive(bn, x, "all"), rtol=1e-4)
    with pytest.raises(TypeError, match="method='func'"):
        egl(bn, x, "all", method="layerwise")


@pytest.fixture
def exact_cuda():
    """fp32 without TF32 (cuDNN convolutions use TF32 by default): the naive loop runs 1-sample
    batches, whose kernels differ from the batched ones, so only exact fp32 compares to 1e-4."""
    saved = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    yield torch.device("cuda")
    torch.backends.cudnn.allow_tf32 = saved[0]
    torch.set_float32_matmul_precision(saved[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("k", [2, 5])
@pytest.mark.parametrize("scope", ["fc", "last", "all"])
def test_fast_egl_equals_naive_loop_on_cuda(k, scope, exact_cuda):
    """`pytest -m gpu`: the same equality on the GPU, the scope-all methods included (both of them)."""
    torch.manual_seed(1)
    m = trained_lenet(k).to(exact_cuda)
    x = torch.randn(6, 3, 48, 48, device=exact_cuda)
    ref = egl_naive(m, x, scope)
    for method in ("layerwise", "func") if scope == "all" else ("auto",):
        fast, probs = egl(m, x, scope, method=method)
        assert fast.device.type == "cuda" and torch.allclose(probs.sum(1), torch.ones(6, device=exact_cuda))
        rel = ((fast - ref).abs() / ref.abs().clamp_min(1e-12)).max().item()
        assert rel < 1e-4, (method, rel)


def test_layerwise_egl_of_a_linear_layer_over_a_sequence_and_of_a_confident_model():
    """Two cases LeNet does not reach: a Linear layer applied to every position of a B x T x I input
    (per-sample gradient summed over positions), and a model so confident that every squared gradient
    norm is far below 1."""
    torch.manual_seed(0)
    seq = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(18, 3))
    x = torch.randn(5, 3, 4)
    layerwise, _ = egl(seq, x, "all", method="layerwise")
    func, _ = egl(seq, x, "all", method="func")
    assert torch.allclose(layerwise, func, rtol=1e-4)
    confident = torch.nn.Sequential(torch.nn.Linear(4, 2))
    with torch.no_grad():
        confident[0].weight.copy_(torch.tensor([[6.0, 0, 0, 0], [-6.0, 0, 0, 0]]))
        confident[0].bias.zero_()
    x = torch.tensor([[1.0, 0.1, -0.2, 0.3], [-1.0, 0.2, 0.1, 0.0]])
    phi, probs = egl(confident, x, "all", method="layerwise")
    assert probs.max(1).values.min() > 0.9999
    ref, _ = egl(confident, x, "all", method="func")
    assert (phi < 1e-3).all() and torch.allclose(phi, ref, rtol=1e-4)
