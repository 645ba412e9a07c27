"""Norm-aware linear attention: formula, causal == recurrent decoding, normaliser, stack use."""

from __future__ import annotations

import pytest
import torch

from norms.linear_attention import (
    NormAwareLinearAttention,
    RecurrentStateCache,
    key_features,
    query_features,
)
from norms.transformer import ATTENTIONS, KVCache, TransformerStack


def _randomise(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))


def _entropy(weights: torch.Tensor) -> float:
    p = weights.detach() / weights.detach().sum(-1, keepdim=True)
    return float(-(p * p.clamp_min(1e-300).log()).sum(-1).mean())


def test_registered_under_nala() -> None:
    assert ATTENTIONS["nala"] is NormAwareLinearAttention
    stack = TransformerStack(16, depth=2, num_heads=4, attention="nala")
    assert all(isinstance(b.attn, NormAwareLinearAttention) for b in stack.blocks)


@pytest.mark.float64
def test_feature_maps_match_the_formula() -> None:
    q, k = torch.randn(5, 8), torch.randn(5, 8)
    norm = q.norm(dim=-1, keepdim=True)
    power = 3.0 * (0.5 + torch.tanh(norm))
    expected_q = torch.cat([(q.clamp_min(0) / norm) ** power, (-q).clamp_min(0) / norm], -1)
    expected_q[:, 8:] = expected_q[:, 8:] ** power
    torch.testing.assert_close(query_features(q), expected_q, rtol=0, atol=1e-14)
    expected_k = torch.cat([k.clamp_min(0) ** 3, (-k).clamp_min(0) ** 3], -1)
    torch.testing.assert_close(key_features(k), expected_k, rtol=0, atol=1e-14)
    assert (query_features(q) >= 0).all() and (query_features(q) <= 1).all()


@pytest.mark.float64
def test_forward_equals_explicit_quadratic_formula() -> None:
    attn = NormAwareLinearAttention(16, num_heads=2, chunk_size=4).eval()
    _randomise(attn)
    x = torch.randn(2, 11, 16)
    q, k, v = attn.project(x)
    phi_q, phi_k = query_features(q), key_features(k)
    scores = phi_q @ phi_k.transpose(-2, -1)
    for causal in (True, False):
        mask = torch.ones(11, 11).tril() if causal else torch.ones(11, 11)
        counts = mask.sum(-1, keepdim=True)
        out = ((scores * mask) @ v / counts) / (
            (scores * mask).sum(-1, keepdim=True) / counts + 1e-6
        )
        expected = attn.proj(out.transpose(1, 2).reshape(2, 11, 16))
        torch.testing.assert_close(attn(x, causal=causal), expected, rtol=0, atol=1e-12)


@pytest.mark.float64
@pytest.mark.parametrize("rope", [False, True])
def test_recurrent_decoding_equals_full_causal_pass(rope: bool) -> None:
    stack = TransformerStack(16, depth=3, num_heads=2, attention="nala", rope=rope).eval()
    _randomise(stack)
    for block in stack.blocks:
        block.attn.chunk_size = 3  # several chunks: the carried state is exercised
    x = torch.randn(3, 9, 16)
    full = stack(x)
    cache = RecurrentStateCache()
    steps = torch.cat([stack(x[:, t : t + 1], cache=cache) for t in range(9)], dim=1)
    assert cache.length == 9
    torch.testing.assert_close(steps, full, rtol=0, atol=1e-12)
    kv_cache = KVCache()
    kv_steps = torch.cat([stack(x[:, t : t + 1], cache=kv_cache) for t in range(9)], dim=1)
    torch.testing.assert_close(kv_steps, full, rtol=0, atol=1e-12)


@pytest.mark.float64
def test_recurrent_cache_chunks_and_rewind() -> None:
    stack = TransformerStack(16, depth=2, num_heads=4, attention="nala", rope=True).eval()
    _randomise(stack)
    x = torch.randn(2, 10, 16)
    full = stack(x)
    cache = RecurrentStateCache()
    stack(x[:, :4], cache=cache)
    stack(torch.randn(2, 3, 16), cache=cache)  # a Jacobi guess, then rewound
    assert cache.length == 7
    cache.truncate(4)
    torch.testing.assert_close(stack(x[:, 4:10], cache=cache), full[:, 4:], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="cannot rewind to length 2; the saved lengths are"):
        cache.truncate(2)
    cache.truncate(0)
    assert cache.length == 0
    torch.testing.assert_close(stack(x[:, :5], cache=cache), full[:, :5], rtol=0, atol=1e-12)


@pytest.mark.float64
def test_non_causal_differs_and_is_causal_free() -> None:
    stack = TransformerStack(16, depth=2, num_heads=2, attention="nala").eval()
    _randomise(stack)
    x = torch.randn(1, 6, 16)
    y = x.clone()
    y[:, 4:] += torch.randn(1, 2, 16)
    causal_x, causal_y = stack(x), stack(y)
    torch.testing.assert_close(causal_x[:, :4], causal_y[:, :4], rtol=0, atol=1e-13)
    free_x, free_y = stack(x, causal=False), stack(y, causal=False)
    assert (free_x[:, 0] - free_y[:, 0]).abs().max() > 1e-4
    assert (free_x[:, :-1] - causal_x[:, :-1]).abs().max() > 1e-4
    # In one attention layer the last token sees every position either way.
    attn = stack.blocks[0].attn
    torch.testing.assert_close(attn(x, causal=False)[:, -1], attn(x)[:, -1], rtol=0, atol=1e-12)


@pytest.mark.float64
def test_explicit_mask_matches_linear_pass_and_blocks_positions() -> None:
    stack = TransformerStack(8, depth=1, num_heads=2, attention="nala").eval()
    _randomise(stack)
    x = torch.randn(2, 4, 8)
    everything = torch.ones(4, 4, dtype=torch.bool)
    torch.testing.assert_close(stack(x, attn_mask=everything), stack(x), rtol=0, atol=1e-12)
    block_diag = torch.block_diag(torch.ones(2, 2), torch.ones(2, 2)).bool()
    y = x.clone()
    y[:, 3] += torch.randn(2, 8)
    out_x = stack(x, attn_mask=block_diag, causal=False)
    out_y = stack(y, attn_mask=block_diag, causal=False)
    torch.testing.assert_close(out_x[:, :2], out_y[:, :2], rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="needs every key"):
        stack(x, cache=RecurrentStateCache(), attn_mask=everything)


@pytest.mark.float64
def test_weights_are_a_convex_combination() -> None:
    attn = NormAwareLinearAttention(32, num_heads=4).eval()
    x = torch.randn(3, 20, 32)
    for causal in (True, False):
        weights = attn.attention_weights(x, causal=causal)
        sums = weights.sum(-1)
        assert (weights >= 0).all()
        assert (sums <= 1).all() and (sums > 0.5).all() and sums.median() > 0.999
        if causal:
            assert (weights.triu(1) == 0).all()
        # The linear-time pass applies exactly these weights to the values.
        _, _, v = attn.project(x)
        out = attn.proj((weights @ v).transpose(1, 2).reshape(3, 20, 32))
        torch.testing.assert_close(attn(x, causal=causal), out, rtol=0, atol=1e-12)


@pytest.mark.float64
def test_larger_query_norm_gives_spikier_attention() -> None:
    # The point of NaLa: unlike plain linear attention, the query norm acts as a temperature.
    base = NormAwareLinearAttention(32, num_heads=4).eval()
    x = torch.randn(4, 64, 32)
    entropies = []
    for scale in (0.25, 1.0, 4.0):
        attn = NormAwareLinearAttention(32, num_heads=4).eval()
        attn.load_state_dict(base.state_dict())
        with torch.no_grad():
            attn.qkv.weight[:32] *= scale
            attn.qkv.bias[:32] *= scale
        entropies.append(_entropy(attn.attention_weights(x, causal=False)))
    assert entropies[0] > entropies[1] + 0.05 > entropies[2] + 0.05


def test_gradients_reach_every_parameter_float32() -> None:
    stack = TransformerStack(16, depth=2, num_heads=2, attention="nala", rope=True)
    x = torch.randn(2, 7, 16, requires_grad=True)
    stack(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in stack.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert stack(x.detach()).dtype == torch.float32


def test_zero_query_gives_finite_gradients() -> None:
    attn = NormAwareLinearAttention(8, num_heads=2)
    with torch.no_grad():
        attn.qkv.weight[:8].zero_()
        attn.qkv.bias[:8].zero_()
    x = torch.randn(1, 3, 8)
    attn(x).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="dim 10 must be divisible by num_heads 4"):
        NormAwareLinearAttention(10, 4)
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        NormAwareLinearAttention(8, 2, chunk_size=0)
    with pytest.raises(ValueError, match="boolean attn_mask"):
        NormAwareLinearAttention(8, 2)(torch.randn(1, 3, 8), attn_mask=torch.ones(3, 3))


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    stack = TransformerStack(32, depth=2, num_heads=4, attention="nala", rope=True).eval()
    x = torch.randn(2, 70, 32)  # more than one chunk
    expected = stack(x)
    out = stack.cuda()(x.cuda())
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-4)
    cache = RecurrentStateCache()
    steps = torch.cat([stack(x[:, t : t + 1].cuda(), cache=cache) for t in range(5)], dim=1)
    torch.testing.assert_close(steps.cpu(), expected[:, :5], rtol=1e-4, atol=1e-4)


@pytest.mark.float64
def test_recurrent_cache_also_serves_softmax_layers() -> None:
    stack = TransformerStack(8, depth=2, num_heads=2, rope=True).eval()
    x = torch.randn(2, 6, 8)
    cache = RecurrentStateCache()
    stack(x[:, :3], cache=cache)
    stack(torch.randn(2, 2, 8), cache=cache)
    cache.truncate(3)
    torch.testing.assert_close(stack(x[:, 3:], cache=cache), stack(x)[:, 3:], rtol=0, atol=1e-12)
    assert cache.length == 6
