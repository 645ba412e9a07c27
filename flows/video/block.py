r"""The deep block of STARFlow-V: causal over all frames, inverted frame by frame.

References:
    Apple. STARFlow-V: End-to-End Video Generative Modeling with Normalizing Flows, 2025
    (global-local blocks, in-frame flip, causal prefix conditioning, video-aware Jacobi from
    the previous frame, sliding-window extension).
    Gu, Chen, Zhai, et al. STARFlow: Scaling Latent Normalizing Flows for High-resolution Image
    Synthesis. arXiv:2506.06276, 2025 (deep-shallow design, softplus affine).
    Zhang, et al. Accelerate TarFlow Sampling with GS-Jacobi Iteration. arXiv:2505.12849, 2025.

:class:`GlobalVideoBlock` is an :class:`~flows.autoregressive.AutoregressiveBlock` over the
flattened frame-major sequence (B, F N, D) with a start token and RoPE positions, so it takes any
number of frames. Its permutation is the in-frame flip (or none): frame order survives, and with
it causality in time. :meth:`GlobalVideoBlock.reverse_video` inverts new frames after given
ones with a KV cache of solved frames, each frame group solved by the one
:class:`~flows.jacobi.JacobiSolver` (sequential decoding, or Jacobi started from the previous
frame's solution), sliding the window when it is full.

Example:
    >>> import torch
    >>> block = GlobalVideoBlock(token_dim=2, tokens_per_frame=4, frames=3, width=16, depth=1,
    ...                          num_heads=2, flip=True)
    >>> _ = torch.nn.init.normal_(block.out.weight, std=0.1)
    >>> x = torch.randn(1, 12, 2)
    >>> z, _ = block(x)
    >>> back, passes, _ = block.reverse_video(z.view(1, 3, 4, 2), solver=JacobiSolver(0.0))
    >>> torch.allclose(back.reshape(x.shape), x, atol=1e-5), passes
    (True, [4, 4, 4])
"""

from __future__ import annotations

import torch

from flows.autoregressive import AutoregressiveBlock, Permutation
from flows.jacobi import JacobiSolver, JacobiStats
from norms.transformer import KVCache

__all__ = ["JACOBI_INITS", "GlobalVideoBlock"]

JACOBI_INITS = ("previous", "noise")


class GlobalVideoBlock(AutoregressiveBlock):
    """The deep block: causal over all frames (any number of them), prefix, start token, RoPE.

    ``forward`` accepts (B, F N, D) for any F (RoPE positions), so the sliding window and the
    log-density of longer clips work; :meth:`reverse_video` is the frame-by-frame inverse.
    """

    def __init__(
        self,
        token_dim: int,
        tokens_per_frame: int,
        frames: int,
        width: int,
        depth: int,
        num_heads: int,
        flip: bool,
        prefix_len: int = 0,
        affine: str = "softplus",
        norm: str = "layernorm",
        norm_placement: str = "pre",
        mlp_ratio: float = 4.0,
    ) -> None:
        n = tokens_per_frame * frames
        permutation = (
            Permutation.reverse_within(n, tokens_per_frame) if flip else Permutation.identity(n)
        )
        super().__init__(
            token_dim,
            n,
            width,
            depth,
            num_heads,
            permutation=permutation,
            prefix_len=prefix_len,
            start_token=True,
            positions="rope",
            affine=affine,
            norm=norm,
            norm_placement=norm_placement,
            mlp_ratio=mlp_ratio,
        )
        self.tokens_per_frame, self.flip = tokens_per_frame, flip

    def _order(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, F, N, D) frames <-> this block's token order (the flip is its own inverse)."""
        return frames.flip(2) if self.flip else frames

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, F N, D) -> (z, logdet (B,)); F may differ from the training length."""
        b, length, d = x.shape
        if length % self.tokens_per_frame or d != self.token_dim:
            raise ValueError(
                f"expected (B, frames * {self.tokens_per_frame}, {self.token_dim}) tokens, "
                f"got {tuple(x.shape)}"
            )
        frames = self._order(x.reshape(b, -1, self.tokens_per_frame, d)).reshape(b, length, d)
        ctx = self._context(cond, b)
        h = torch.cat([ctx, self._embed(frames[:, :-1], 0)], dim=1)
        log_sigma, mu = self._affine(self.transformer(h)[:, ctx.shape[1] - 1 :])
        zp = (frames - mu) * torch.exp(-log_sigma)
        z = self._order(zp.reshape(b, -1, self.tokens_per_frame, d)).reshape(b, length, d)
        return z, -log_sigma.sum(dim=(1, 2))

    def _frame_solver(self, solver: JacobiSolver) -> tuple[int, JacobiSolver]:
        """(frames solved together, the solver of one such group).

        A chunk of at most one frame solves frame by frame in chunks of that size; None means
        one frame; a multiple of the frame size solves that many frames as one chunk.
        """
        n, chunk = self.tokens_per_frame, solver.chunk_size
        if chunk is None or chunk <= n:
            return 1, solver
        if chunk % n:
            raise ValueError(
                f"a Jacobi chunk above one frame ({n} tokens) must be whole frames, got {chunk}"
            )
        return chunk // n, JacobiSolver(solver.threshold, solver.max_iter, None, solver.sync_ranks)

    @torch.no_grad()
    def reverse_video(
        self,
        z: torch.Tensor,
        cond: torch.Tensor | None = None,
        uncond: torch.Tensor | None = None,
        guidance: float = 0.0,
        guidance_rule: str = "tarflow",
        given: torch.Tensor | None = None,
        solver: JacobiSolver | None = None,
        window: int | None = None,
        context_frames: int | None = None,
        init: str = "previous",
        progress: bool = False,
    ) -> tuple[torch.Tensor, list[int], JacobiStats]:
        """Invert new frames z (B, F, N, D) after ``given`` frames (B, G, N, D) of block input.

        Returns (x (B, F, N, D), passes per new frame (a group's passes booked on its first
        frame), what the solver spent). ``solver``: sequential decoding by default; its
        ``chunk_size`` is at most one frame (default: one frame) or a multiple of the frame
        size (that many frames solved as one chunk). ``window`` frames at most sit in the cache
        (default: the training length); when it is full, the cache is rebuilt from the last
        ``context_frames`` frames (default window // 2). ``init="previous"`` starts every frame
        from the previous frame's solution (video-aware Jacobi), ``"noise"`` from its own z.
        """
        if init not in JACOBI_INITS:
            raise ValueError(f"jacobi init {init!r} is unknown; choose previous or noise")
        solver = solver or JacobiSolver.sequential()
        b, f, n, d = z.shape
        window = window or self.num_tokens // n
        keep = context_frames if context_frames is not None else max(1, window // 2)
        if not 1 <= keep < window:
            raise ValueError(f"context_frames must lie in [1, {window - 1}], got {keep}")
        group, frame_solver = self._frame_solver(solver)
        ctx, guided = self._guided_context(cond, uncond, b, guidance_rule)

        def embed(tokens: torch.Tensor, position: int) -> torch.Tensor:
            h = self._embed(tokens, 0)  # RoPE: positions come from the cache
            return torch.cat([h, h]) if guided else h

        step = self._solver_step(guided, guidance, guidance_rule)

        def rebuild(frames: list[torch.Tensor]) -> tuple[KVCache, torch.Tensor]:
            """A cache of the prefix, start token and ``frames``; returns it and the last input."""
            seq = ctx
            if frames:
                seq = torch.cat([ctx, embed(torch.cat(frames, dim=1).reshape(b, -1, d), 0)], 1)
            cache = KVCache()
            if seq.shape[1] > 1:
                self.transformer(seq[:, :-1], cache=cache)
            return cache, seq[:, -1:]

        history = list(self._order(given).unbind(1)) if given is not None else []
        in_window = min(len(history), window - 1)
        cache, last = rebuild(history[len(history) - in_window :])
        zp = self._order(z)
        solved, passes, stats = [], [], JacobiStats()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=f, desc=f"{solver.method} frames", unit="frame", leave=False)
        t = 0
        while t < f:
            if in_window == window:
                in_window = keep
                cache, last = rebuild(history[len(history) - keep :])
            g = min(group, f - t, window - in_window)
            # Video-aware Jacobi: the previous frame's solution is every new frame's first guess.
            if history and init == "previous":
                x = history[-1].repeat(1, g, 1)
            else:
                x = zp[:, t : t + g].reshape(b, g * n, d).clone()
            spent = JacobiStats()
            target = zp[:, t : t + g].reshape(b, g * n, d)
            last = frame_solver.solve(step, embed, target, x, cache, last, stats=spent)
            stats.add(spent)
            frames = list(x.reshape(b, g, n, d).unbind(1))
            history += frames
            solved += frames
            passes += [spent.passes] + [0] * (g - 1)
            in_window += g
            t += g
            if bar is not None:
                bar.update(g)
        if bar is not None:
            bar.close()
        return self._order(torch.stack(solved, dim=1)), passes, stats
