"""The shared transformer: cached decoding equals the full pass, placements, causality."""

from __future__ import annotations

import math

import pytest
import torch

from norms.transformer import KVCache, TransformerStack, layer_placements


def _randomise(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))


@pytest.mark.float64
@pytest.mark.parametrize("placement", ["pre", "post", "mix", "lns"])
@pytest.mark.parametrize("rope", [False, True])
def test_one_token_cache_equals_full_causal_pass(placement: str, rope: bool) -> None:
    stack = TransformerStack(16, depth=4, num_heads=2, norm_placement=placement, rope=rope).eval()
    _randomise(stack)
    x = torch.randn(3, 7, 16)
    full = stack(x)
    cache = KVCache()
    steps = torch.cat([stack(x[:, t : t + 1], cache=cache) for t in range(7)], dim=1)
    assert cache.length == 7
    torch.testing.assert_close(steps, full, rtol=0, atol=1e-12)


@pytest.mark.float64
def test_chunk_on_cached_prefix_and_truncate() -> None:
    stack = TransformerStack(16, depth=2, num_heads=4, norm="rmsnorm", rope=True).eval()
    _randomise(stack)
    x = torch.randn(2, 10, 16)
    full = stack(x)
    cache = KVCache()
    stack(x[:, :4], cache=cache)
    garbage = stack(torch.randn(2, 3, 16), cache=cache)  # a Jacobi guess, then rewound
    assert garbage.shape == (2, 3, 16) and cache.length == 7
    cache.truncate(4)
    chunk = stack(x[:, 4:10], cache=cache)
    torch.testing.assert_close(chunk, full[:, 4:], rtol=0, atol=1e-12)


@pytest.mark.float64
def test_causality_later_tokens_do_not_change_earlier_outputs() -> None:
    stack = TransformerStack(8, depth=3, num_heads=2, norm_placement="mix", mix_alpha=0.34).eval()
    _randomise(stack)
    x = torch.randn(1, 6, 8)
    y = x.clone()
    y[:, 4:] += torch.randn(1, 2, 8)
    a, b = stack(x), stack(y)
    torch.testing.assert_close(a[:, :4], b[:, :4], rtol=0, atol=1e-13)
    assert (a[:, 4:] - b[:, 4:]).abs().max() > 1e-3


def test_non_causal_and_explicit_mask() -> None:
    stack = TransformerStack(8, depth=1, num_heads=2).eval()
    x = torch.randn(1, 4, 8)
    y = x.clone()
    y[:, 3] += torch.randn(8)
    assert not torch.allclose(stack(x, causal=False)[:, 0], stack(y, causal=False)[:, 0])
    block_diag = torch.block_diag(torch.ones(2, 2), torch.ones(2, 2)).bool()
    out_x = stack(x, attn_mask=block_diag, causal=False)
    out_y = stack(y, attn_mask=block_diag, causal=False)
    torch.testing.assert_close(out_x[:, :2], out_y[:, :2])


def test_placements() -> None:
    assert layer_placements("mix", 8) == ["post"] * 2 + ["pre"] * 6
    assert layer_placements("post", 3) == ["post"] * 3
    stack = TransformerStack(8, depth=4, num_heads=2, norm_placement="lns")
    scales = [block.norm_scale for block in stack.blocks]
    assert scales == pytest.approx([1 / math.sqrt(i) for i in range(1, 5)])
    post = TransformerStack(8, 2, 2, norm_placement="post")
    assert isinstance(post.final_norm, torch.nn.Identity)
    with pytest.raises(ValueError, match="placement 'sandwich' is unknown; choose one of: pre"):
        TransformerStack(8, 2, 2, norm_placement="sandwich")
    with pytest.raises(ValueError, match="does not accept channels-last tokens"):
        TransformerStack(8, 2, 2, norm="groupnorm")


def test_lns_scales_the_norm_output() -> None:
    torch.manual_seed(1)
    pre = TransformerStack(8, depth=2, num_heads=2, norm_placement="pre")
    lns = TransformerStack(8, depth=2, num_heads=2, norm_placement="lns")
    lns.load_state_dict(pre.state_dict())
    x = torch.randn(2, 3, 8)
    # Block 1 has scale 1, so a one-block stack would agree; block 2 (scale 1/sqrt 2) must not.
    torch.testing.assert_close(lns.blocks[0](x), pre.blocks[0](x))
    assert not torch.allclose(lns(x), pre(x))


def test_selu_mlp_keeps_unit_variance() -> None:
    stack = TransformerStack(64, depth=1, num_heads=4, activation="selu")
    mlp = stack.blocks[0].mlp
    h = torch.randn(4096, 64)
    out = mlp.act(mlp.fc1(h))
    assert abs(out.mean().item()) < 0.1 and abs(out.var().item() - 1) < 0.15


@pytest.mark.float64
def test_rope_table_matches_formula_and_survives_inference_mode() -> None:
    from norms import transformer

    transformer._ROPE_TABLES.clear()
    stack = TransformerStack(8, depth=1, num_heads=2, rope=True).eval()
    with torch.inference_mode():  # the first use is often sampling
        stack(torch.randn(1, 3, 8))
    cos, sin = transformer.rope_table(100, 2, torch.float64, torch.device("cpu"))
    angles = torch.arange(100, dtype=torch.float64)[:, None] * 10000.0 ** (-torch.arange(2) / 2)
    torch.testing.assert_close(cos[:100], angles.cos(), rtol=0, atol=0)
    torch.testing.assert_close(sin[:100], angles.sin(), rtol=0, atol=0)
    stack.train()
    stack(torch.randn(2, 5, 8)).square().sum().backward()  # tables are saved for backward
    assert stack.blocks[0].attn.qkv.weight.grad is not None


def test_rope_table_is_accurate_in_bfloat16() -> None:
    from norms import transformer

    cos, _ = transformer.rope_table(1000, 4, torch.bfloat16, torch.device("cpu"))
    exact = torch.cos(torch.arange(1000, dtype=torch.float64)[:, None]
                      * 10000.0 ** (-torch.arange(4, dtype=torch.float64) / 4))
    # Angles taken in bf16 would round positions above 256 and be off by up to ~1.
    assert (cos[:1000].double() - exact).abs().max() < 1e-2
