"""The registry battery: every registered norm builds, runs, trains and survives save/load."""

from __future__ import annotations

import io

import pytest
import torch

import norms

C = 8
SHAPES = {"tokens": [(2, 5, C), (3, C)], "maps": [(2, C, 4, 4), (2, C, 6), (1, C, 2, 3, 3)]}
ALL = norms.available_norms()
# With C = 8 the default group counts would give one channel per group; use 2 groups so that
# group statistics (and BCN's batch step, which per-channel groups would cancel) matter.
OPTIONS = {"batchchannelnorm": {"num_groups": 2}, "evonorm_s0": {"groups": 2}}


def _build(name: str) -> torch.nn.Module:
    return norms.build_norm(name, C, **OPTIONS.get(name, {}))


def _cases():
    for name in ALL:
        for layout in norms.norm_spec(name).layouts:
            for shape in SHAPES[layout]:
                if name == "batchnorm" and shape[0] == 1 and len(shape) == 5:
                    continue
                yield pytest.param(name, shape, id=f"{name}-{'x'.join(map(str, shape))}")


def _train_steps(layer: torch.nn.Module, shape: tuple[int, ...], steps: int = 3) -> None:
    layer.train()
    params = [p for p in layer.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.05) if params else None
    for _ in range(steps):
        x = (torch.randn(shape) * 2.0 + 0.5).requires_grad_()
        layer(x).square().mean().backward()
        if opt is not None:
            opt.step()
            opt.zero_grad()


def test_required_names_present():
    required = {
        "layernorm", "rmsnorm", "crmsnorm", "powernorm", "unifiednorm", "evonorm_b0",
        "evonorm_s0", "batchchannelnorm", "groupnorm", "batchnorm", "regionnorm_b",
        "regionnorm_l", "fake_layernorm", "identity",
    }  # fmt: skip
    assert required <= set(ALL)


def test_running_stats_flags():
    flagged = {n for n in ALL if norms.norm_spec(n).running_stats}
    assert {"powernorm", "unifiednorm", "evonorm_b0", "batchchannelnorm", "batchnorm"} <= flagged
    assert not flagged & {"layernorm", "rmsnorm", "crmsnorm", "evonorm_s0", "regionnorm_b"}


def test_layout_filter():
    assert set(norms.available_norms("tokens")) | set(norms.available_norms("maps")) == set(ALL)
    assert "powernorm" in norms.available_norms("tokens")
    assert "evonorm_b0" not in norms.available_norms("tokens")
    assert "evonorm_b0" in norms.available_norms("maps")


@pytest.mark.parametrize(("name", "shape"), list(_cases()))
def test_forward_backward(name, shape):
    layer = _build(name)
    x = (torch.randn(shape) * 3.0 + 1.0).requires_grad_()
    y = layer(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    if name != "identity":
        assert x.grad.abs().sum() > 0
    for pname, p in layer.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize(("name", "shape"), list(_cases()))
def test_float64(name, shape):
    layer = _build(name).double()
    x = torch.randn(shape, dtype=torch.float64)
    y = layer(x)
    assert y.dtype == torch.float64
    layer.eval()
    assert layer(x).dtype == torch.float64


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip(name):
    layout = norms.norm_spec(name).layouts[0]
    shape = SHAPES[layout][0]
    layer = _build(name)
    if name == "fake_layernorm":
        layer.start_calibration()
    _train_steps(layer, shape)
    if name == "fake_layernorm":
        layer.freeze()
    layer.eval()
    x = torch.randn(shape)
    expected = layer(x)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh = _build(name)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    fresh.eval()
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in ALL if norms.norm_spec(n).running_stats])
def test_running_stats_train_differs_from_eval(name):
    layout = norms.norm_spec(name).layouts[0]
    shape = SHAPES[layout][0]
    layer = _build(name)
    _train_steps(layer, shape, steps=1)
    x = torch.randn(shape) * 4.0 + 2.0
    train_out = layer.train()(x)
    eval_a = layer.eval()(x)
    eval_b = layer(x)
    assert not torch.allclose(train_out, eval_a, atol=1e-3)
    torch.testing.assert_close(eval_a, eval_b, rtol=0, atol=0)  # eval updates nothing
    # In eval mode the output of one sample does not depend on the rest of the batch.
    torch.testing.assert_close(layer(x[:1]), eval_a[:1], rtol=1e-5, atol=1e-5)


def test_unknown_name_lists_known():
    with pytest.raises(ValueError, match="rmsnrom") as info:
        norms.build_norm("rmsnrom", C)
    for name in ALL:
        assert name in str(info.value)


def test_bad_num_features():
    with pytest.raises(ValueError, match="positive int"):
        norms.build_norm("layernorm", 0)


@pytest.mark.parametrize("name", ALL)
def test_wrong_layout_names_expected_layout(name):
    if name == "identity":
        pytest.skip("identity accepts anything")
    layout = norms.norm_spec(name).layouts[0]
    layer = _build(name)
    bad = torch.randn(2, C, 3) if layout == "tokens" else torch.randn(2, 3, C)
    expected = "channels-last tokens" if layout == "tokens" else "channels-first maps"
    with pytest.raises(ValueError, match=expected):
        layer(bad)


def test_unknown_option_is_a_value_error_listing_allowed_ones():
    with pytest.raises(ValueError, match="unknown option.*warmup_iters.*allowed: .*eps"):
        norms.build_norm("layernorm", C, warmup_iters=3)


@pytest.mark.parametrize("name", norms.available_norms("tokens"))
def test_every_token_norm_runs_inside_the_shared_transformer(name):
    from norms.transformer import TransformerStack

    stack = TransformerStack(width=C, depth=1, num_heads=2, norm=name)
    x = torch.randn(2, 5, C, requires_grad=True)
    stack(x).square().mean().backward()
    assert torch.isfinite(x.grad).all()
    stack.eval()
    assert torch.isfinite(stack(x)).all()


@pytest.mark.parametrize("name", norms.available_norms("maps"))
def test_every_map_norm_replaces_a_groupnorm_on_attention_shaped_input(name):
    # diffusers' attention calls group_norm(hidden.transpose(1, 2)).transpose(1, 2) on (B, HW, C).
    layer = _build(name)
    hidden = torch.randn(2, 9, C, requires_grad=True)
    out = layer(hidden.transpose(1, 2)).transpose(1, 2)
    assert out.shape == hidden.shape
    out.sum().backward()
    assert torch.isfinite(hidden.grad).all()
