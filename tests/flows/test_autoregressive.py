"""The autoregressive meta-block: inverse, log-determinant, Jacobi, cache, causality, guidance."""

from __future__ import annotations

import pytest
import torch

from flows.autoregressive import AutoregressiveBlock, Permutation, combine_guidance
from flows.jacobi import JacobiSolver

T, D, W = 6, 3, 16


def _block(randomise: bool = True, **kwargs) -> AutoregressiveBlock:
    options = dict(token_dim=D, num_tokens=T, width=W, depth=2, num_heads=2)
    options.update(kwargs)
    block = AutoregressiveBlock(**options).eval()
    if randomise:  # the output projection is zero at init: a round trip would prove nothing
        with torch.no_grad():
            for p in block.parameters():
                p.add_(0.3 * torch.randn_like(p))
    return block


VARIANTS = {
    "tarflow": {},
    "tarflow-reverse": {"permutation": "reverse"},
    "starflow": {"start_token": True, "positions": "rope", "affine": "softplus"},
    "prefix-learned": {"prefix_len": 2, "permutation": "reverse"},
    "prefix-rope-flip": {
        "prefix_len": 2,
        "positions": "rope",
        "permutation": Permutation.reverse_within(T, 3),
    },
}


def _cond(kwargs: dict, batch: int) -> torch.Tensor | None:
    return torch.randn(batch, kwargs["prefix_len"], W) if kwargs.get("prefix_len") else None


def test_fresh_block_is_identity() -> None:
    block = _block(randomise=False)
    x = torch.randn(2, T, D)
    z, logdet = block(x)
    torch.testing.assert_close(z, x)
    assert torch.all(logdet == 0)


@pytest.mark.float64
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_round_trip_sequential_and_jacobi(variant: str) -> None:
    kwargs = VARIANTS[variant]
    block = _block(**kwargs)
    x = torch.randn(3, T, D)
    cond = _cond(kwargs, 3)
    z, _ = block(x, cond)
    assert (z - x).abs().max() > 1e-2
    x_s, spent = block.reverse(z, cond)
    torch.testing.assert_close(x_s, x, rtol=0, atol=1e-10)
    x_j, stats = block.reverse(z, cond, solver=JacobiSolver(threshold=0.0, max_iter=T))
    torch.testing.assert_close(x_j, x, rtol=0, atol=1e-10)
    unknowns = block.params(x, cond)[1].shape[1]  # T, or T - 1 when token 0 is kept
    assert spent.chunk_passes == [1] * unknowns and spent.token_passes == unknowns
    # threshold 0: one token accepted per pass, then the chunk ends
    assert stats.chunk_passes == [unknowns]


@pytest.mark.float64
@pytest.mark.parametrize("variant", ["tarflow-reverse", "starflow"])
def test_logdet_matches_autograd_jacobian(variant: str) -> None:
    block = _block(**VARIANTS[variant])
    x = torch.randn(1, T, D)
    _, logdet = block(x)
    jac = torch.autograd.functional.jacobian(
        lambda v: block(v.view(1, T, D))[0].flatten(), x.flatten()
    )
    sign, expected = torch.linalg.slogdet(jac)
    assert sign.item() == 1
    torch.testing.assert_close(logdet[0], expected, rtol=0, atol=1e-10)


@pytest.mark.float64
@pytest.mark.parametrize("start_token", [False, True])
def test_jacobi_first_k_tokens_exact_after_k_passes(start_token: bool) -> None:
    block = _block(start_token=start_token, positions="rope" if start_token else "learned")
    z = torch.randn(2, T, D)
    exact, _ = block.reverse(z)
    first = 0 if start_token else 1  # TARFlow leaves token 0 unchanged: it is exact at once
    for k in range(1, T - first):
        x_k, stats = block.reverse(z, solver=JacobiSolver(threshold=0.0, max_iter=k))
        assert stats.passes == k
        n_exact = first + k
        torch.testing.assert_close(x_k[:, :n_exact], exact[:, :n_exact], rtol=0, atol=1e-10)
        assert (x_k[:, n_exact:] - exact[:, n_exact:]).abs().max() > 1e-6


@pytest.mark.float64
@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_chunked_jacobi_with_cache_equals_sequential(chunk: int) -> None:
    kwargs = VARIANTS["prefix-rope-flip"]
    block = _block(**kwargs)
    z, cond = torch.randn(2, T, D), _cond(kwargs, 2)
    exact, _ = block.reverse(z, cond)
    solver = JacobiSolver(threshold=0.0, max_iter=chunk, chunk_size=chunk)
    x, stats = block.reverse(z, cond, solver=solver)
    torch.testing.assert_close(x, exact, rtol=0, atol=1e-10)
    assert stats.passes == T  # threshold 0 accepts exactly one token per pass
    assert stats.chunk_passes == [min(chunk, T - s) for s in range(0, T, chunk)]


@pytest.mark.float64
def test_jacobi_threshold_stops_early_and_init_is_used() -> None:
    block = _block()
    with torch.no_grad():
        block.out.weight.mul_(0.02)  # a mildly coupled map converges in a few passes
    z = torch.randn(2, T, D)
    exact, _ = block.reverse(z)
    x, stats = block.reverse(z, solver=JacobiSolver(threshold=1e-8, max_iter=50))
    assert stats.passes < T - 1 and (x - exact).abs().max() < 1e-3
    warm = JacobiSolver(threshold=1e-12, max_iter=50)
    _, stats_warm = block.reverse(z, solver=warm, init=exact)
    assert stats_warm.passes == 1


@pytest.mark.float64
@pytest.mark.parametrize("start_token", [False, True])
def test_given_prefix_is_kept_and_rest_is_solved(start_token: bool) -> None:
    flip = Permutation.reverse_within(T, 3)
    block = _block(start_token=start_token, positions="rope", permutation=flip)
    x = torch.randn(2, T, D)
    z, _ = block(x)
    noise = torch.randn_like(z)
    noise[:, 3:] = z[:, 3:]  # the first group's z is unknown; its x is given
    out_seq, _ = block.reverse(noise, given=x[:, :3])
    exact_jacobi = JacobiSolver(threshold=0.0, max_iter=T)
    out_jac, _ = block.reverse(noise, given=x[:, :3], solver=exact_jacobi)
    torch.testing.assert_close(out_seq, x, rtol=0, atol=1e-10)
    torch.testing.assert_close(out_jac, x, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="does not keep the first 2 tokens"):
        block.reverse(noise, given=x[:, :2])


@pytest.mark.float64
@pytest.mark.parametrize("variant", ["tarflow", "starflow", "prefix-learned"])
def test_causality_later_tokens_leave_earlier_params_unchanged(variant: str) -> None:
    kwargs = VARIANTS[variant]
    block = _block(**kwargs)
    x, cond = torch.randn(1, T, D), _cond(kwargs, 1)
    perm = block.permutation
    for t in range(1, T):
        xp = perm.forward(x).clone()
        xp[:, t:] += torch.randn_like(xp[:, t:])
        ls_a, mu_a = block.params(x, cond)
        ls_b, mu_b = block.params(perm.inverse(xp), cond)
        first = T - mu_a.shape[1]
        n = t + 1 - first  # parameters of tokens <= t depend on tokens < t only
        torch.testing.assert_close(mu_a[:, :n], mu_b[:, :n], rtol=0, atol=1e-12)
        torch.testing.assert_close(ls_a[:, :n], ls_b[:, :n], rtol=0, atol=1e-12)
        if n < mu_a.shape[1]:
            assert (mu_a[:, n:] - mu_b[:, n:]).abs().max() > 1e-6


@pytest.mark.float64
def test_cached_decoding_equals_full_masked_pass() -> None:
    block = _block(**VARIANTS["starflow"])
    x = torch.randn(2, T, D)
    z, _ = block(x)
    ls_full, mu_full = block.params(x)
    # sequential reverse computes each token's parameters in one-token cached passes; its
    # exact inversion of z from the masked pass proves both give the same parameters
    x_seq, _ = block.reverse(z)
    torch.testing.assert_close(x_seq, x, rtol=0, atol=1e-12)
    ls_again, mu_again = block.params(x_seq)
    torch.testing.assert_close(mu_again, mu_full, rtol=0, atol=1e-12)
    torch.testing.assert_close(ls_again, ls_full, rtol=0, atol=1e-12)


@pytest.mark.float64
@pytest.mark.parametrize("rule", ["tarflow", "starflow"])
def test_guidance_zero_equals_conditional(rule: str) -> None:
    kwargs = VARIANTS["prefix-learned"]
    block = _block(**kwargs)
    z, cond, uncond = torch.randn(2, T, D), _cond(kwargs, 2), _cond(kwargs, 2)
    exact_jacobi = JacobiSolver(threshold=0.0, max_iter=T)
    plain, _ = block.reverse(z, cond)
    guided0, _ = block.reverse(z, cond, uncond, guidance=0.0, guidance_rule=rule)
    torch.testing.assert_close(guided0, plain, rtol=0, atol=1e-12)
    jac0, _ = block.reverse(z, cond, uncond, 0.0, rule, solver=exact_jacobi)
    torch.testing.assert_close(jac0, plain, rtol=0, atol=1e-10)
    guided, _ = block.reverse(z, cond, uncond, guidance=2.0, guidance_rule=rule)
    assert (guided - plain).abs().max() > 1e-4
    jac, _ = block.reverse(z, cond, uncond, 2.0, rule, solver=exact_jacobi)
    torch.testing.assert_close(jac, guided, rtol=0, atol=1e-10)


@pytest.mark.float64
def test_guidance_rules() -> None:
    ls_c, mu_c, ls_u, mu_u = (torch.randn(50) for _ in range(4))
    for rule in ("tarflow", "starflow"):
        ls, mu = combine_guidance(ls_c, mu_c, ls_u, mu_u, 0.0, rule)
        torch.testing.assert_close(ls, ls_c)
        torch.testing.assert_close(mu, mu_c)
    ls, mu = combine_guidance(ls_c, mu_c, ls_u, mu_u, 1.5, "tarflow")
    torch.testing.assert_close(ls, 2.5 * ls_c - 1.5 * ls_u)
    w = 3.0
    ls, mu = combine_guidance(ls_c, mu_c, ls_u, mu_u, w, "starflow")
    assert torch.isfinite(ls).all()
    # where sigma_c >= sigma_u (s = 1) the product of Gaussians is N((1+w)mu_c - w mu_u, sigma_c)
    same = ls_c >= ls_u
    torch.testing.assert_close(ls[same], ls_c[same])
    torch.testing.assert_close(mu[same], ((1 + w) * mu_c - w * mu_u)[same])
    # elsewhere it is the exact product p_c^{1+w} / p_u^w of the two Gaussians
    prec = (1 + w) * torch.exp(-2 * ls_c) - w * torch.exp(-2 * ls_u)
    mean = ((1 + w) * mu_c * torch.exp(-2 * ls_c) - w * mu_u * torch.exp(-2 * ls_u)) / prec
    torch.testing.assert_close(ls[~same], (-0.5 * torch.log(prec))[~same])
    torch.testing.assert_close(mu[~same], mean[~same])
    with pytest.raises(ValueError, match="guidance rule 'cfg' is unknown"):
        combine_guidance(ls_c, mu_c, ls_u, mu_u, 1.0, "cfg")


def test_permutations_invert_and_flip_keeps_groups() -> None:
    x = torch.arange(12.0).view(1, 12, 1)
    for perm in (
        Permutation.identity(12),
        Permutation.reverse(12),
        Permutation.reverse_within(12, 4),
    ):
        torch.testing.assert_close(perm.inverse(perm.forward(x)), x)
    flipped = Permutation.reverse_within(12, 4).forward(x).flatten().tolist()
    assert flipped == [3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8]
    with pytest.raises(ValueError, match="must hold 0..2 once each"):
        Permutation([0, 0, 2])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="affine 'sigmoid' is unknown"):
        AutoregressiveBlock(D, T, W, 1, 2, affine="sigmoid")
    block = _block(prefix_len=2)
    with pytest.raises(ValueError, match="learned positions need a prefix of 2 tokens, got 3"):
        block(torch.randn(1, T, D), torch.randn(1, 3, W))
    with pytest.raises(ValueError, match="expected tokens"):
        block(torch.randn(1, T + 1, D), torch.randn(1, 2, W))
