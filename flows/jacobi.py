r"""The one Jacobi solver of the transformer flows: chunked, accept-prefix, rewindable cache.

References:
    Song, Meng, Ermon. Accelerating Feedforward Computation via Parallel Nonlinear Equation
    Solving. ICML 2021, arXiv:2002.03629 (Jacobi decoding of a causal map).
    Zhang, et al. Accelerate TarFlow Sampling with GS-Jacobi Iteration. arXiv:2505.12849, 2025
    (chunks, the relative-change stop rule, uneven block difficulty).
    Zhai, Zhang, Gu, et al. Normalizing Flows are Capable Generative Models (TARFlow).
    arXiv:2412.06329, 2024.
    Apple. STARFlow-V: End-to-End Video Generative Modeling with Normalizing Flows, 2025
    (video Jacobi frame by frame, started from the previous frame).

The problem. Inverting one autoregressive flow block means solving, in the block's token order,

    x_t = mu_t(x_{<t}) + sigma_t(x_{<t}) z_t,        t = start .. L - 1,

where (log sigma_t, mu_t) come from a causal transformer whose input at position t - 1 is the
embedding of x_{t-1} (the input of the first unknown token is given as ``last``: the last context
token or the embedding of the last known token). :meth:`JacobiSolver.solve` iterates

    x^{k+1}_{a..e-1} = mu(x^k) + sigma(x^k) z

over chunks [s, e) of ``chunk_size`` tokens, all tokens of a chunk in one transformer pass. The
KV cache holds the inputs of the solved prefix; after every pass the first unsolved token ``a``
is exact (all its inputs are), and so, to the threshold, are the tokens after it whose inputs no
longer move: they are accepted, the cache is rewound to keep exactly their inputs, and the next
pass recomputes only the rest of the chunk. A chunk of c tokens is exact after c passes (one
accepted per pass at least), so no chunk runs longer; with ``threshold=0`` the result equals the
sequential inverse to rounding. ``chunk_size=1`` *is* sequential decoding: one one-token pass per
token (:meth:`JacobiSolver.sequential`).

The threshold convention (one statistic, one default, images and video alike). The statistic
is :func:`jacobi_change`: per sample, mean((x^{k+1} - x^k)^2) / mean((x^{k+1})^2) over the tokens
of the pass (the reference's), the worst sample deciding, so a slow sample is never hidden by
a batch mean; a token is accepted early when its own relative change is below the threshold in
every sample. The default, :data:`DEFAULT_JACOBI_THRESHOLD` = 1e-11, was measured (CPU,
float32, ``benchmarks/jacobi.py --thresholds`` and ``benchmarks/video.py --thresholds``; tables
in benchmarks/RESULTS.md): max |Jacobi - sequential| stays below 1e-3 on the shipped digits
TARFlow (5e-6; Jacobi still about 2x faster than sequential at batch 1) and, with one-frame
chunks, on a trained moving-digits video flow (5e-4 over six noise draws at batches 1 and 4).
1e-10 is the loosest power of ten that passes there; 1e-9 lets one draw reach 0.3, so the
default keeps a decade of margin. Such a trained video flow's inverse amplifies float32
rounding about ten-thousandfold (a relative change of 1e-7 in z moves its sequential output by
up to 5e-4), so Jacobi must solve it almost exactly and saves little there; whole-window chunks,
whose accepted still tokens carry errors at the threshold's level, miss sequential by up to
3e-3 even at 1e-13. In half precision the change never falls that low; Jacobi then runs every
chunk to exactness (its length in passes), slower but never wrong.

Ranks. With ``sync_ranks=True`` and an initialised process group, the stop decision is
all-reduced (every rank runs the same passes, needed only when the pass itself communicates,
e.g. sharded weights) and no tokens are accepted early (ranks would accept different counts).
By default nothing is all-reduced, so one rank sampling alone (the trainer's sample hook)
cannot deadlock.

Example:
    >>> import torch
    >>> from flows.autoregressive import AutoregressiveBlock
    >>> block = AutoregressiveBlock(token_dim=2, num_tokens=8, width=16, depth=1, num_heads=2)
    >>> _ = torch.nn.init.normal_(block.out.weight, std=0.1)  # a fresh block is the identity
    >>> z = torch.randn(1, 8, 2)
    >>> exact, spent = block.reverse(z)  # sequential: token 0 is kept, 7 one-token passes
    >>> x, stats = block.reverse(z, solver=JacobiSolver(threshold=0.0, chunk_size=4))
    >>> torch.allclose(x, exact, atol=1e-6), spent.passes, stats.chunk_passes
    (True, 7, [4, 3])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from norms.transformer import KVCache

__all__ = [
    "DEFAULT_JACOBI_THRESHOLD",
    "JacobiSolver",
    "JacobiStats",
    "jacobi_change",
]

DEFAULT_JACOBI_THRESHOLD = 1e-11

# (hidden inputs, cache) -> (log_sigma, mu) of the positions after those inputs; appends to cache
Step = Callable[[torch.Tensor, KVCache], tuple[torch.Tensor, torch.Tensor]]
# (tokens, position of the first) -> hidden inputs at those positions
Embed = Callable[[torch.Tensor, int], torch.Tensor]


def jacobi_change(new: torch.Tensor, old: torch.Tensor, threshold: float) -> tuple[float, int]:
    """One Jacobi pass's change of (B, T, D) tokens: (worst sample's change, leading tokens still).

    The change is the reference's statistic mean((new - old)^2) / mean(new^2), taken per sample
    (a batch mean would hide a slow sample); "still" counts the leading tokens whose change is
    below ``threshold`` in every sample (they may be accepted). One host sync for both.
    """
    scale = new.pow(2).mean(dim=(1, 2)).clamp_min(torch.finfo(new.dtype).tiny)
    per_sample_token = (new - old).pow(2).mean(dim=2) / scale[:, None]
    small = (per_sample_token.amax(dim=0) < threshold).cumprod(0)
    worst = per_sample_token.mean(dim=1).amax()
    change, n_small = torch.stack([worst, small.sum()]).tolist()
    return change, int(n_small)


@dataclass
class JacobiStats:
    """What a solve spent: transformer passes per chunk and token-passes (tokens recomputed).

    Token-passes measure the arithmetic: sequential decoding of T tokens costs T passes and T
    token-passes; Jacobi costs fewer passes but more token-passes.
    """

    chunk_passes: list[int] = field(default_factory=list)
    token_passes: int = 0

    @property
    def passes(self) -> int:
        """Transformer passes over all chunks."""
        return sum(self.chunk_passes)

    def add(self, other: JacobiStats) -> None:
        """Append another solve's chunks (e.g. the next frame's)."""
        self.chunk_passes += other.chunk_passes
        self.token_passes += other.token_passes


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _stop_everywhere(converged: bool, device: torch.device, distributed: bool) -> bool:
    """All ranks stop together: all-reduce the flag only when asked and a process group exists."""
    if not distributed:
        return converged
    flag = torch.tensor([1.0 if converged else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


@dataclass(frozen=True)
class JacobiSolver:
    r"""Chunked parallel fixed-point inversion of a causal affine map (see the module docstring).

    Arguments:
        threshold: stop a chunk (and accept still tokens) when the relative change of a pass,
            :func:`jacobi_change`, falls below it; 0 runs every chunk to exactness.
        max_iter: passes per chunk at most; None: the chunk's length, after which a chunk is
            exact (so Jacobi is never less accurate than its threshold allows).
        chunk_size: tokens solved together; None: everything the caller asks for at once;
            1: sequential decoding.
        sync_ranks: all-reduce the stop decision over an initialised process group.
    """

    threshold: float = DEFAULT_JACOBI_THRESHOLD
    max_iter: int | None = None
    chunk_size: int | None = None
    sync_ranks: bool = False

    def __post_init__(self) -> None:
        if not self.threshold >= 0:
            raise ValueError(f"jacobi threshold must be >= 0, got {self.threshold}")
        if self.max_iter is not None and self.max_iter < 1:
            raise ValueError(f"jacobi max_iter must be >= 1, got {self.max_iter}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"jacobi chunk_size must be >= 1 (or None), got {self.chunk_size}")

    @classmethod
    def sequential(cls) -> JacobiSolver:
        """Sequential decoding: one-token chunks, one pass each."""
        return cls(threshold=0.0, max_iter=1, chunk_size=1)

    @property
    def method(self) -> str:
        """ "sequential" for one-token chunks, else "jacobi"."""
        return "sequential" if self.chunk_size == 1 else "jacobi"

    def solve(
        self,
        step: Step,
        embed: Embed,
        z: torch.Tensor,
        x: torch.Tensor,
        cache: KVCache,
        last: torch.Tensor,
        start: int = 0,
        stats: JacobiStats | None = None,
    ) -> torch.Tensor:
        """Solve tokens ``start ..`` of ``x`` (B, L, D) in place; return the next ``last``.

        ``z`` (B, L, D): the noise of the block's affine map. ``x``: known tokens before
        ``start``, first guesses from ``start`` on. ``cache`` holds the inputs of every position
        before the input of token ``start``; ``last`` is that input (hidden, (rows, 1, width)).
        On return the cache holds the inputs up to that of token L - 1 and the returned hidden
        input (the embedding of x_{L-1}) is the input of whatever token follows.
        """
        length = z.shape[1]
        chunk = self.chunk_size or max(length - start, 1)
        distributed = self.sync_ranks and _distributed()
        for s in range(start, length, chunk):
            e = min(s + chunk, length)
            # A chunk of c tokens is exact after c passes, so never iterate longer.
            budget = e - s if self.max_iter is None else min(self.max_iter, e - s)
            a, base = s, cache.length  # a: first token of the chunk not yet accepted
            passes = 0
            for k in range(budget):
                if a > s:  # token a - 1 is accepted: recompute only the rest of the chunk
                    inputs = embed(x[:, a - 1 : e - 1], a - 1)
                elif e - s > 1:
                    inputs = torch.cat([last, embed(x[:, s : e - 1], s)], dim=1)
                else:
                    inputs = last
                log_sigma, mu = step(inputs, cache)
                new = mu + torch.exp(log_sigma) * z[:, a:e]
                passes += 1
                if stats is not None:
                    stats.token_passes += e - a
                if k == budget - 1:
                    x[:, a:e] = new
                    break  # the cache keeps this pass: it is the solved prefix
                change, n_small = jacobi_change(new, x[:, a:e], self.threshold)
                x[:, a:e] = new
                if _stop_everywhere(change < self.threshold, z.device, distributed):
                    break
                # Token a is exact; the tokens after it whose inputs no longer move are, to the
                # threshold. Keep their inputs (computed from unchanged values) in the cache.
                # (With ranks in step, none: each rank could accept a different count.)
                accept = 0 if distributed else min(1 + n_small, e - a)
                if a + accept == e:
                    break
                cache.truncate(base + accept)
                a, base = a + accept, base + accept
            if stats is not None:
                stats.chunk_passes.append(passes)
            last = embed(x[:, e - 1 : e], e - 1)
        return last
