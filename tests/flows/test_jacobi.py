"""The one Jacobi solver: exactness, accept-prefix, pass budgets, statistics, ranks."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from flows.autoregressive import AutoregressiveBlock
from flows.jacobi import JacobiSolver, JacobiStats, jacobi_change
from trainers.ranks import free_port

T, D, W = 8, 3, 16


def _block(scale: float = 0.3) -> AutoregressiveBlock:
    block = AutoregressiveBlock(D, T, W, depth=2, num_heads=2, start_token=True, positions="rope")
    with torch.no_grad():  # the output projection is zero at init: make the map non-trivial
        for p in block.parameters():
            p.add_(scale * torch.randn_like(p))
    return block.eval()


@pytest.mark.float64
@pytest.mark.parametrize("chunk", [None, 1, 3, 8])
def test_threshold_zero_equals_sequential_with_per_chunk_passes(chunk: int | None) -> None:
    block = _block()
    z = torch.randn(2, T, D)
    exact, spent = block.reverse(z)
    assert spent.chunk_passes == [1] * T and spent.token_passes == T  # sequential decoding
    solver = JacobiSolver(threshold=0.0, chunk_size=chunk)  # default budget: the chunk length
    x, stats = block.reverse(z, solver=solver)
    torch.testing.assert_close(x, exact, rtol=0, atol=1e-10)
    # a chunk of c tokens takes exactly c passes at threshold 0 (never more)
    sizes = [min(chunk or T, T - s) for s in range(0, T, chunk or T)]
    assert stats.chunk_passes == sizes
    # one token accepted per pass: a chunk of c recomputes c + (c - 1) + ... + 1 tokens
    assert stats.token_passes == sum(c * (c + 1) // 2 for c in sizes)


@pytest.mark.float64
def test_still_prefix_is_accepted_and_the_cache_rewound() -> None:
    block = _block()
    z = torch.randn(2, T, D)
    exact, _ = block.reverse(z)
    half = T // 2
    init = torch.randn_like(z)
    init[:, :half] = exact[:, :half]  # the first half already solved, the rest noise
    solver = JacobiSolver(threshold=1e-20, max_iter=T)
    x, stats = block.reverse(z, solver=solver, init=init)
    # The rewound cache must hold exactly the accepted tokens' inputs, or x would be wrong.
    torch.testing.assert_close(x, exact, rtol=0, atol=1e-10)
    # Pass 1 recomputes all T tokens; the still first half and the (exact) token after it are
    # accepted at once, so pass 2 recomputes only the T/2 - 1 tokens after them.
    strict, strict_stats = block.reverse(z, solver=JacobiSolver(0.0, max_iter=T), init=init)
    assert strict_stats.token_passes == sum(range(1, T + 1))  # threshold 0: one per pass
    assert stats.passes == T - half
    assert stats.token_passes == T + sum(range(1, T - half))
    torch.testing.assert_close(strict, exact, rtol=0, atol=1e-10)


@pytest.mark.float64
def test_max_iter_caps_the_passes_of_every_chunk() -> None:
    block = _block()
    z = torch.randn(1, T, D)
    exact, _ = block.reverse(z)
    x, stats = block.reverse(z, solver=JacobiSolver(threshold=0.0, max_iter=2, chunk_size=4))
    assert stats.chunk_passes == [2, 2]
    # after k passes the first k tokens of a chunk are exact; the next chunk starts from there
    torch.testing.assert_close(x[:, :2], exact[:, :2], rtol=0, atol=1e-10)
    assert (x - exact).abs().max() > 1e-6


@pytest.mark.float64
def test_loose_threshold_stops_after_one_pass_per_chunk() -> None:
    block = _block()
    _, stats = block.reverse(torch.randn(1, T, D), solver=JacobiSolver(1e30, 50, chunk_size=3))
    assert stats.chunk_passes == [1, 1, 1] and stats.token_passes == T


def test_stats_add_and_solver_options() -> None:
    stats = JacobiStats([2, 3], 7)
    stats.add(JacobiStats([4], 4))
    assert stats.chunk_passes == [2, 3, 4] and stats.passes == 9 and stats.token_passes == 11
    assert JacobiSolver.sequential().method == "sequential" and JacobiSolver().method == "jacobi"
    for bad, message in [
        (dict(threshold=-1.0), "threshold must be >= 0"),
        (dict(threshold=float("nan")), "threshold must be >= 0"),
        (dict(max_iter=0), "max_iter must be >= 1, got 0"),
        (dict(chunk_size=0), "chunk_size must be >= 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            JacobiSolver(**bad)


@pytest.mark.float64
def test_jacobi_change_is_worst_sample_and_still_prefix() -> None:
    new = torch.ones(2, 4, 1)
    old = new.clone()
    old[1, 2] = 0.0  # sample 1, token 2 moved: per-token change 1, sample change 1/4
    change, still = jacobi_change(new, old, 0.5)
    assert change == 0.25 and still == 2  # token 3 is still too, but not in the prefix
    change, still = jacobi_change(new, old, 0.1)
    assert change == 0.25 and still == 2
    assert jacobi_change(new, new, 0.0) == (0.0, 0)
    assert jacobi_change(new, new, 1e-12) == (0.0, 4)


def test_sync_ranks_off_never_touches_torch_distributed(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("torch.distributed was called")

    for name in ("is_available", "is_initialized", "all_reduce", "get_world_size"):
        monkeypatch.setattr(dist, name, refuse)
    block = _block()
    block.reverse(torch.randn(2, T, D), solver=JacobiSolver(threshold=1e-6, chunk_size=4))


@pytest.mark.float64
def test_sync_ranks_all_reduces_the_stop_and_accepts_nothing_early(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        block = _block()
        z = torch.randn(2, T, D)
        calls = {"n": 0}
        all_reduce = dist.all_reduce

        def counting_all_reduce(*args, **kwargs):
            calls["n"] += 1
            return all_reduce(*args, **kwargs)

        monkeypatch.setattr(dist, "all_reduce", counting_all_reduce)
        # Sampling on one rank (the trainer's sample hook) must not wait on the others.
        alone, _ = block.reverse(z, solver=JacobiSolver(threshold=0.0, max_iter=T))
        assert calls["n"] == 0
        synced_solver = JacobiSolver(threshold=0.0, max_iter=T, sync_ranks=True)
        synced, stats = block.reverse(z, solver=synced_solver)
        assert calls["n"] == T - 1  # every pass but the chunk's last, which needs no decision
        torch.testing.assert_close(synced, alone, rtol=0, atol=1e-12)
        # ranks could accept different counts, so every pass recomputes the whole chunk
        assert stats.token_passes == T * T
    finally:
        dist.destroy_process_group()
