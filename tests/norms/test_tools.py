"""LayerNorm removal (fake LN + folding), Normalize-and-Project, and self-normalizing SELU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import norms
from norms.selu import SELUMLP, lecun_normal_

# ----------------------------------------------------------------------------- fake LayerNorm


@pytest.mark.float64
def test_fake_layernorm_states():
    layer = norms.build_norm("fake_layernorm", 6, momentum=0.5)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5), layer.bias.normal_()
    x = torch.randn(3, 4, 6) * 2.5 + 1
    ref = nn.functional.layer_norm(x, (6,), layer.weight, layer.bias, 1e-5)
    torch.testing.assert_close(layer(x), ref)  # live: exactly LayerNorm
    assert float(layer.scale) == 1.0
    layer.start_calibration()
    torch.testing.assert_close(layer(x), ref)  # calibrating: still LayerNorm
    std1 = torch.sqrt(x.var(-1, correction=0) + 1e-5).mean()
    torch.testing.assert_close(layer.scale, std1)
    x2 = torch.randn(5, 6) * 0.5
    layer(x2)
    std2 = torch.sqrt(x2.var(-1, correction=0) + 1e-5).mean()
    torch.testing.assert_close(layer.scale, 0.5 * std1 + 0.5 * std2)
    layer.freeze()
    frozen = (x - x.mean(-1, keepdim=True)) / layer.scale * layer.weight + layer.bias
    torch.testing.assert_close(layer(x), frozen, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="already frozen"):
        layer.start_calibration()
    with pytest.raises(ValueError, match="before any calibration"):
        norms.build_norm("fake_layernorm", 6).freeze()


@pytest.mark.float64
def test_fake_layernorm_from_layernorm():
    ln = nn.LayerNorm(5, eps=1e-6)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5), ln.bias.normal_()
    fake = norms.FakeLayerNorm.from_layernorm(ln)
    x = torch.randn(4, 5)
    torch.testing.assert_close(fake(x), ln(x), rtol=0, atol=1e-12)
    assert fake.weight.dtype == torch.float64
    # float64 is also the default dtype here, so check that the dtype follows the layer.
    single = norms.FakeLayerNorm.from_layernorm(nn.LayerNorm(5).float())
    assert single.weight.dtype == single.scale.dtype == torch.float32


@pytest.mark.float64
@pytest.mark.parametrize("kind", ["fake_layernorm", "powernorm", "unifiednorm", "identity"])
def test_fold_norm_into_linear(kind):
    options = {"warmup_iters": 1} if kind in ("powernorm", "unifiednorm") else {}
    norm = norms.build_norm(kind, 6, **options)
    if kind == "fake_layernorm":
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5), norm.bias.normal_()
        norm.start_calibration()
        norm(torch.randn(8, 6) * 3)
        norm.freeze()
    elif kind != "identity":
        for _ in range(3):
            norm(torch.randn(4, 5, 6) * 2 + 1).sum().backward()
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5), norm.bias.normal_()
        norm.eval()
    linear = nn.Linear(6, 3)
    folded = norms.fold_norm_into_linear(norm, linear)
    x = torch.randn(4, 5, 6) * 2 + 0.5
    torch.testing.assert_close(folded(x), linear(norm(x)), rtol=0, atol=1e-12)


def test_fold_rejects_non_affine_states():
    with pytest.raises(ValueError, match="must be frozen"):
        norms.fold_norm_into_linear(norms.build_norm("fake_layernorm", 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="train mode"):
        norms.fold_norm_into_linear(norms.build_norm("powernorm", 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="not affine"):
        norms.fold_norm_into_linear(norms.build_norm("layernorm", 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="expects 5 inputs"):
        norms.fold_norm_into_linear(norms.build_norm("unifiednorm", 4).eval(), nn.Linear(5, 2))


# ----------------------------------------------------------------------------- NaP


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)
    )  # fmt: skip


def test_insert_norms_places_norm_before_each_nonlinearity():
    model = norms.insert_norms(_mlp())
    for index in (1, 3):
        block = model[index]
        assert isinstance(block, nn.Sequential)
        assert isinstance(block[0], norms.LayerNorm) and block[0].num_features == 16
        assert isinstance(block[1], (nn.GELU, nn.ReLU))
    conv = norms.insert_norms(nn.Sequential(nn.Conv2d(3, 8, 3), nn.SiLU()), map_norm="evonorm_s0")
    assert isinstance(conv[1][0], norms.EvoNormS0)
    assert conv(torch.randn(2, 3, 6, 6)).shape == (2, 8, 4, 4)
    with pytest.raises(ValueError, match="no Linear/Conv before"):
        norms.insert_norms(nn.Sequential(nn.ReLU(), nn.Linear(3, 3)))
    with pytest.raises(ValueError, match="no nonlinearity"):
        norms.insert_norms(nn.Sequential(nn.Linear(3, 3)))


def test_nap_projector_keeps_norms_constant_through_training():
    model = norms.insert_norms(_mlp())
    projector = norms.NaPProjector(model)
    initial = {name: n0.clone() for name, _, n0 in projector.groups}
    names = [name for name, _, _ in projector.groups]
    assert "0.weight" in names and "1.0.(weight, bias)" in names and "0.bias" not in names
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(32, 6)).square().mean().backward()
        opt.step()
        assert projector.max_relative_error() > 1e-4  # the step moved the norms...
        projector.project()
        assert projector.max_relative_error() < 1e-6  # ...and projection restored them
    for name, params, _ in projector.groups:
        current = torch.sqrt(sum(p.detach().square().sum() for p in params))
        torch.testing.assert_close(current, initial[name])
    fresh = norms.NaPProjector(model)
    fresh.load_state_dict(projector.state_dict())
    assert fresh.max_relative_error() < 1e-6


def test_nap_projector_needs_something_to_project():
    with pytest.raises(ValueError, match="no weight matrix"):
        norms.NaPProjector(nn.Sequential(nn.ReLU()))


# ----------------------------------------------------------------------------- SELU


@torch.no_grad()
def _stack_stats(init, depth=20, width=256):
    torch.manual_seed(0)
    x = torch.randn(2048, width)
    for _ in range(depth):
        layer = nn.Linear(width, width, bias=False)
        init(layer.weight)
        x = torch.selu(layer(x))
    return float(x.mean()), float(x.var())


def test_selu_lecun_stack_is_self_normalizing():
    mean, var = _stack_stats(lecun_normal_)
    assert abs(mean) < 0.1 and abs(var - 1.0) < 0.15
    # torch's calculate_gain('selu') = 3/4 is not the SNN init: the variance collapses.
    gain = nn.init.calculate_gain("selu")
    _, bad_var = _stack_stats(lambda w: nn.init.xavier_normal_(w, gain=gain))
    assert bad_var < 0.5


def test_lecun_normal_variance_and_selumlp():
    w = lecun_normal_(torch.empty(400, 50, 3))
    assert abs(float(w.var()) * 150 - 1.0) < 0.05
    mlp = SELUMLP(8, 64, 3, depth=3, dropout=0.1)
    assert any(isinstance(m, nn.AlphaDropout) for m in mlp.modules())
    assert mlp(torch.randn(5, 8)).shape == (5, 3)
    with pytest.raises(ValueError, match="dropout"):
        SELUMLP(8, 64, 3, dropout=1.5)
    with pytest.raises(ValueError, match=">= 2 dims"):
        lecun_normal_(torch.empty(5))


@pytest.mark.float64
def test_frozen_fake_layernorm_gradcheck():
    from norms.removal import _FrozenLayerNorm

    x = torch.randn(3, 4, 5, requires_grad=True)
    a = (torch.rand(5) + 0.5).requires_grad_()
    b = torch.randn(5, requires_grad=True)
    assert torch.autograd.gradcheck(_FrozenLayerNorm.apply, (x, a, b))
