"""Whole-model conversions: Pre-LN == Pre-RMSNorm == Pre-CRMSNorm, and LayerNorm removal."""

from __future__ import annotations

import pytest
import torch

import norms.linear_attention  # noqa: F401  (registers the "nala" attention)
from norms.conversions import (
    TinyTransformer,
    calibrate,
    center_residual_stream,
    fold_fake_layernorm,
    pre_ln_to_pre_rmsnorm,
    pre_rmsnorm_to_pre_crmsnorm,
    to_fake_layernorm,
)
from norms.removal import FakeLayerNorm


def _model(placement: str = "pre", attention: str = "softmax", **stack) -> TinyTransformer:
    model = TinyTransformer.build(
        5,
        width=16,
        out_features=3,
        depth=3,
        num_heads=2,
        norm_placement=placement,
        attention=attention,
        **stack,
    ).eval()
    # Non-trivial gains/shifts and non-centred writers, so every fold is exercised.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _norm_names(model: TinyTransformer) -> set[str]:
    stack = model.stack
    layers = [stack.final_norm] + [n for b in stack.blocks for n in (b.norm1, b.norm2)]
    return {type(n).__name__ for n in layers}


@pytest.mark.float64
@pytest.mark.parametrize(
    ("placement", "attention", "rope"),
    [("pre", "softmax", False), ("lns", "softmax", True), ("pre", "nala", False)],
)
def test_pre_ln_equals_pre_rmsnorm_equals_pre_crmsnorm(
    placement: str, attention: str, rope: bool
) -> None:
    model = _model(placement, attention, rope=rope)
    x = torch.randn(4, 7, 5)
    reference = model(x)
    rms = pre_ln_to_pre_rmsnorm(model)
    crms = pre_rmsnorm_to_pre_crmsnorm(rms)
    torch.testing.assert_close(rms(x), reference, rtol=0, atol=1e-10)
    torch.testing.assert_close(crms(x), reference, rtol=0, atol=1e-10)
    torch.testing.assert_close(rms(x, causal=False), model(x, causal=False), rtol=0, atol=1e-10)
    # The conversions did what they claim, not something that happens to agree.
    assert _norm_names(model) == {"LayerNorm"} and _norm_names(rms) == {"RMSNorm"}
    assert len(_norm_names(crms)) == 1 and "LayerNorm" not in _norm_names(crms)
    assert all(n.weight is None for n in (rms.stack.final_norm, rms.stack.blocks[0].norm1))
    assert rms.stack_width == 16 and crms.stack_width == 15
    assert crms.embed.weight.shape == (15, 5) and crms.head.weight.shape == (3, 15)
    assert crms.stack.blocks[0].attn.qkv.in_features == 15
    assert crms.stack.blocks[0].mlp.fc2.out_features == 15
    assert sum(p.numel() for p in crms.parameters()) < sum(p.numel() for p in rms.parameters())
    # The original is untouched.
    torch.testing.assert_close(model(x), reference, rtol=0, atol=0)


@pytest.mark.float64
def test_residual_stream_is_zero_mean_after_centring() -> None:
    model = _model()
    centred = center_residual_stream(model)
    x = torch.randn(2, 6, 5)
    streams = []
    hook = centred.stack.blocks[1].register_forward_pre_hook(lambda m, a: streams.append(a[0]))
    torch.testing.assert_close(centred(x), model(x), rtol=0, atol=1e-10)
    hook.remove()
    assert streams[0].mean(-1).abs().max() < 1e-12
    assert streams[0].abs().mean() > 0.1
    plain = []
    model.stack.blocks[1].register_forward_pre_hook(lambda m, a: plain.append(a[0]))
    model(x)
    assert plain[0].mean(-1).abs().max() > 1e-2  # without centring the stream has a mean


@pytest.mark.float64
def test_crmsnorm_conversion_refuses_a_stream_with_a_mean() -> None:
    model = _model()
    with torch.no_grad():
        for block in model.stack.blocks:
            block.norm1.bias.zero_()
    rms_like = pre_ln_to_pre_rmsnorm(model)
    with torch.no_grad():
        rms_like.stack.blocks[0].attn.proj.bias.add_(1.0)
    with pytest.raises(ValueError, match="residual stream is not zero-mean"):
        pre_rmsnorm_to_pre_crmsnorm(rms_like)
    with pytest.raises(
        ValueError, match="needs rmsnorm norms in the stack, found \\['LayerNorm'\\]"
    ):
        pre_rmsnorm_to_pre_crmsnorm(model)


def test_conversions_refuse_post_norm_and_missing_final_norm() -> None:
    post = TinyTransformer.build(4, 8, 2, depth=2, num_heads=2, norm_placement="post")
    match = "pre-norm stack \\(norm_placement pre or lns\\), got 'post'"
    with pytest.raises(ValueError, match=match):
        pre_ln_to_pre_rmsnorm(post)
    bare = TinyTransformer.build(4, 8, 2, depth=2, num_heads=2, final_norm=False)
    with pytest.raises(ValueError, match="final norm"):
        to_fake_layernorm(bare)
    with pytest.raises(ValueError, match="needs layernorm norms"):
        pre_ln_to_pre_rmsnorm(TinyTransformer.build(4, 8, 2, 1, 2, norm="rmsnorm"))
    with pytest.raises(ValueError, match="live FakeLayerNorms"):
        calibrate(post, [torch.randn(1, 2, 4)])
    uncalibrated = to_fake_layernorm(TinyTransformer.build(4, 8, 2, depth=1, num_heads=2))
    with pytest.raises(ValueError, match="must be frozen"):
        fold_fake_layernorm(uncalibrated)


@pytest.mark.float64
def test_float32_conversion_is_close() -> None:
    model = _model().float()
    x = torch.randn(3, 5, 5, dtype=torch.float32)
    crms = pre_rmsnorm_to_pre_crmsnorm(pre_ln_to_pre_rmsnorm(model))
    assert crms.head.weight.dtype == torch.float32
    torch.testing.assert_close(crms(x), model(x), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- LayerNorm removal


def _calibration_data(in_features: int) -> list[torch.Tensor]:
    return [torch.randn(8, 16, in_features) for _ in range(4)]


@pytest.mark.float64
@pytest.mark.parametrize("placement", ["pre", "lns"])
def test_folded_model_equals_fake_layernorm_model(placement: str) -> None:
    model = _model(placement)
    fake = to_fake_layernorm(model)
    calibrate(fake, _calibration_data(5))
    folded = fold_fake_layernorm(fake)
    x = torch.randn(4, 7, 5)
    torch.testing.assert_close(folded(x), fake(x), rtol=0, atol=1e-10)
    assert not any(isinstance(m, FakeLayerNorm) for m in folded.modules())
    assert _norm_names(folded) == {"IdentityNorm"}
    # Every norm of the stack was replaced and calibrated, so each fold above had a frozen scale.
    assert _norm_names(fake) == {"FakeLayerNorm"}
    assert all(bool(m.frozen) for m in fake.modules() if isinstance(m, FakeLayerNorm))


@pytest.mark.float64
def test_calibration_measures_the_mean_token_std() -> None:
    model = TinyTransformer.build(32, width=32, out_features=4, depth=2, num_heads=4).eval()
    data = _calibration_data(32)
    seen: list[torch.Tensor] = []
    norm = model.stack.blocks[1].norm2
    norm.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    for batch in data:
        model(batch)
    tokens = torch.cat([s.reshape(-1, 32) for s in seen])
    expected = torch.sqrt(tokens.var(-1, unbiased=False) + norm.eps).mean()
    fake = to_fake_layernorm(model)
    calibrate(fake, data)
    layer = fake.stack.blocks[1].norm2
    assert torch.isclose(layer.scale, expected, rtol=1e-12)
    assert bool(layer.frozen) and not layer.calibrating and layer.momentum == 0.1


@pytest.mark.float64
def test_fake_layernorm_approximates_the_original_on_calibration_data() -> None:
    model = TinyTransformer.build(32, width=32, out_features=4, depth=2, num_heads=4).eval()
    data = _calibration_data(32)
    x = torch.cat(data)
    reference = model(x)

    @torch.no_grad()
    def gap(candidate: TinyTransformer) -> float:
        return float((candidate(x) - reference).norm() / reference.norm())

    fake = to_fake_layernorm(model)
    calibrate(fake, data)
    calibrated = gap(fake)
    # Measured here: about 0.20 relative error (tokens' stds vary around the frozen scalar;
    # the LN-removal papers fine-tune afterwards to close it).
    assert calibrated < 0.3
    # The measured scale beats scales 30% off in either direction.
    for factor in (0.7, 1.3):
        off = to_fake_layernorm(model)
        calibrate(off, data)
        with torch.no_grad():
            for layer in off.modules():
                if isinstance(layer, FakeLayerNorm):
                    layer.scale.mul_(factor)
        assert gap(off) > calibrated
    # The folded (norm-free) model keeps exactly the fake-LN gap.
    assert abs(gap(fold_fake_layernorm(fake)) - calibrated) < 1e-10


@pytest.mark.float64
def test_layernorm_without_affine_converts() -> None:
    model = TinyTransformer.build(5, 16, 3, depth=2, num_heads=2).eval()
    for block in model.stack.blocks:
        block.norm1 = torch.nn.LayerNorm(16, elementwise_affine=False)
    x = torch.randn(2, 4, 5)
    crms = pre_rmsnorm_to_pre_crmsnorm(pre_ln_to_pre_rmsnorm(model))
    torch.testing.assert_close(crms(x), model(x), rtol=0, atol=1e-10)
    fake = to_fake_layernorm(model)
    calibrate(fake, [x])
    torch.testing.assert_close(fold_fake_layernorm(fake)(x), fake(x), rtol=0, atol=1e-10)
