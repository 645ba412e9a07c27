r"""The autoregressive meta-block of transformer flows (TARFlow / STARFlow / STARFlow-V).

References:
    Zhai, Zhang, Gu, et al. Normalizing Flows are Capable Generative Models (TARFlow).
    arXiv:2412.06329, 2024.
    Gu, Chen, Zhai, et al. STARFlow: Scaling Latent Normalizing Flows for High-resolution Image
    Synthesis. arXiv:2506.06276, 2025.
    Apple. STARFlow-V: video generation with normalizing flows, 2025 (global-local blocks,
    in-frame flip permutation, Jacobi sampling from the previous frame).
    Zhang, et al. Accelerate TarFlow Sampling with GS-Jacobi Iteration. arXiv:2505.12849, 2025.
    Song, Meng, Ermon. Accelerating feedforward computation via parallel nonlinear equation
    solving (Jacobi decoding). ICML 2021, arXiv:2002.03629.

API (stable; the video flow builds on it)
-----------------------------------------
``Permutation(index)`` reorders tokens along dim 1: ``perm.forward(x)[:, i] = x[:, index[i]]``,
``perm.inverse`` undoes it. Factories: ``Permutation.identity(n)``, ``Permutation.reverse(n)``,
``Permutation.reverse_within(n, group)`` (reverse inside consecutive groups of ``group`` tokens,
e.g. the in-frame flip of STARFlow-V, which keeps frame order).

``AutoregressiveBlock(token_dim, num_tokens, width, depth, num_heads, permutation, ...)`` maps
tokens ``x`` (B, T, D) to ``z`` (B, T, D). In the permuted order, token t is transformed by an
affine map whose parameters come from a causal transformer that sees only

    [conditioning prefix (B, P, width)] + [start token] + [embedded tokens < t].

If that context is empty (no prefix, no start token: plain TARFlow) token 0 is left unchanged;
otherwise every token is transformed (the last context token predicts token 0).

- ``forward(x, cond=None) -> (z, logdet)``: ``logdet`` is the per-sample TOTAL log|det dz/dx|
  in nats, shape (B,).
- ``params(x, cond=None, uncond=None, guidance=0.0, guidance_rule="tarflow")`` ->
  ``(log_sigma, mu)`` for the transformed tokens, in permuted order (for tests/diagnostics).
- ``reverse(z, cond=None, uncond=None, guidance=0.0, guidance_rule="tarflow", solver=None,
  init=None, given=None) -> (x, stats)``: the inverse, solved by a
  :class:`flows.jacobi.JacobiSolver` (default: sequential decoding, one token per pass with a
  KV cache; a Jacobi solver iterates chunks of tokens in parallel from ``init``, default ``z``).
  ``stats`` (:class:`flows.jacobi.JacobiStats`) holds the passes per chunk and token-passes.
- Guidance: give ``uncond`` (the prefix of the unconditional model, same shape as ``cond``);
  ``guidance_rule="tarflow"`` extrapolates (log_sigma, mu), ``"starflow"`` samples the Gaussian
  p_c^{1+w} / p_u^w. With ``uncond`` given the unconditional pass always runs, so w = 0 returns
  the conditional model through the guided code path.
- ``given``: (B, n, D) tokens (original order) whose values at this block's input are known
  (image-to-video: the given frames). The permutation must map the first n positions onto
  themselves (true for ``identity`` and ``reverse_within`` on whole groups).
- ``affine="exp"``: z = (x - mu) exp(-a) (TARFlow). ``affine="softplus"``: a is soft-clipped to
  4 tanh(a/4), sigma = softplus(a + 0.5413) (= 1 at a = 0), z = (x - mu) / sigma (STARFlow).
- ``positions="learned"`` (table of prefix_len + start + num_tokens entries; the prefix must
  then have exactly ``prefix_len`` tokens) or ``"rope"`` (any prefix length).
- The output projection is zero-initialised: a fresh block is the identity with logdet 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from flows.jacobi import JacobiSolver, JacobiStats
from norms.transformer import KVCache, TransformerStack

__all__ = [
    "AFFINES",
    "GUIDANCE_RULES",
    "AutoregressiveBlock",
    "Permutation",
    "combine_guidance",
]

AFFINES = ("exp", "softplus")
GUIDANCE_RULES = ("tarflow", "starflow")
POSITIONS = ("learned", "rope")
_SOFTPLUS_SHIFT = 0.5413  # softplus(0.5413) = 1.000, so a zero output means sigma = 1


class Permutation:
    """A fixed reordering of the token axis (dim 1 of (B, T, D))."""

    def __init__(self, index: Sequence[int] | torch.Tensor, kind: str = "custom") -> None:
        index = torch.as_tensor(index, dtype=torch.long).flatten()
        if not torch.equal(index.sort().values, torch.arange(len(index))):
            raise ValueError(f"permutation index must hold 0..{len(index) - 1} once each")
        self.index, self.inverse_index = index, torch.argsort(index)
        self.kind = kind

    @classmethod
    def identity(cls, n: int) -> Permutation:
        return cls(torch.arange(n), "identity")

    @classmethod
    def reverse(cls, n: int) -> Permutation:
        return cls(torch.arange(n - 1, -1, -1), "reverse")

    @classmethod
    def reverse_within(cls, n: int, group: int) -> Permutation:
        """Reverse the order inside consecutive groups of ``group`` tokens, keep group order."""
        if group <= 0 or n % group:
            raise ValueError(f"group size {group} must be positive and divide {n} tokens")
        return cls(torch.arange(n).view(n // group, group).flip(1).flatten(), "reverse_within")

    def __len__(self) -> int:
        return len(self.index)

    def _apply(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != len(self.index):
            raise ValueError(f"permutation of {len(self.index)} tokens got {x.shape[1]} tokens")
        if self.kind == "identity":
            return x
        if self.kind == "reverse":
            return x.flip(1)
        return x.index_select(1, index.to(x.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(x, self.index)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(x, self.inverse_index)

    def keeps_prefix(self, n: int) -> bool:
        """True when the first ``n`` positions are mapped onto themselves."""
        return bool((self.index[:n] < n).all())

    def __repr__(self) -> str:
        return f"Permutation({self.kind}, n={len(self.index)})"


def combine_guidance(
    log_sigma_c: torch.Tensor,
    mu_c: torch.Tensor,
    log_sigma_u: torch.Tensor,
    mu_u: torch.Tensor,
    guidance: float,
    rule: str = "tarflow",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Classifier-free guidance of one affine step; returns the guided (log_sigma, mu).

    ``tarflow``: a <- a + w (a - a_u), mu <- mu + w (mu - mu_u) (TARFlow, arXiv:2412.06329).
    ``starflow``: the Gaussian p_c^{1+w} / p_u^w with s = min(sigma_c / sigma_u, 1)^2,
    sigma = sigma_c / sqrt(1 + w - w s), mu = ((1 + w) mu_c - w s mu_u) / (1 + w - w s)
    (STARFlow, arXiv:2506.06276); needs w > -1 so that sigma stays positive.
    """
    if rule == "tarflow":
        return (
            log_sigma_c + guidance * (log_sigma_c - log_sigma_u),
            mu_c + guidance * (mu_c - mu_u),
        )
    if rule == "starflow":
        if guidance <= -1:
            raise ValueError(f"starflow guidance needs w > -1, got {guidance}")
        s = torch.exp(2 * torch.clamp(log_sigma_c - log_sigma_u, max=0.0))
        denom = 1 + guidance - guidance * s
        mu = ((1 + guidance) * mu_c - guidance * s * mu_u) / denom
        return log_sigma_c - 0.5 * torch.log(denom), mu
    known = ", ".join(GUIDANCE_RULES)
    raise ValueError(f"guidance rule {rule!r} is unknown; choose one of: {known}")


class AutoregressiveBlock(nn.Module):
    r"""One TARFlow meta-block: permute, causal transformer, shifted affine map, permute back.

    Arguments:
        token_dim: D, the size of one token (C p^2 for images).
        num_tokens: T, the sequence length.
        width, depth, num_heads, mlp_ratio: the transformer.
        permutation: a :class:`Permutation` of T tokens (or "identity" / "reverse").
        prefix_len: number of conditioning prefix tokens (required exactly with learned
            positions; informative with RoPE).
        start_token: prepend a learned start token (STARFlow), so token 0 is transformed too.
        positions: "learned" or "rope".
        affine: "exp" (TARFlow) or "softplus" (STARFlow, with soft clipping).
        norm, norm_placement, mix_alpha, activation, dropout: passed to
            :class:`norms.transformer.TransformerStack`.
    """

    def __init__(
        self,
        token_dim: int,
        num_tokens: int,
        width: int,
        depth: int,
        num_heads: int,
        permutation: Permutation | str = "identity",
        prefix_len: int = 0,
        start_token: bool = False,
        positions: str = "learned",
        affine: str = "exp",
        norm: str = "layernorm",
        norm_placement: str = "pre",
        mlp_ratio: float = 4.0,
        mix_alpha: float = 0.25,
        activation: str = "gelu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if affine not in AFFINES:
            raise ValueError(f"affine {affine!r} is unknown; choose one of: {', '.join(AFFINES)}")
        if positions not in POSITIONS:
            raise ValueError(
                f"positions {positions!r} is unknown; choose one of: {', '.join(POSITIONS)}"
            )
        if isinstance(permutation, str):
            if permutation not in ("identity", "reverse"):
                raise ValueError(f"permutation {permutation!r} is unknown; use identity or reverse")
            permutation = getattr(Permutation, permutation)(num_tokens)
        if len(permutation) != num_tokens:
            raise ValueError(f"permutation has {len(permutation)} tokens, block has {num_tokens}")
        self.token_dim, self.num_tokens, self.width = token_dim, num_tokens, width
        self.permutation, self.prefix_len = permutation, prefix_len
        self.affine, self.positions = affine, positions
        self.embed = nn.Linear(token_dim, width)
        self.start = nn.Parameter(0.02 * torch.randn(1, 1, width)) if start_token else None
        if positions == "learned":
            length = prefix_len + int(start_token) + num_tokens
            self.pos = nn.Parameter(0.02 * torch.randn(1, length, width))
        else:
            self.register_parameter("pos", None)
        self.transformer = TransformerStack(
            width,
            depth,
            num_heads,
            mlp_ratio=mlp_ratio,
            norm=norm,
            norm_placement=norm_placement,
            mix_alpha=mix_alpha,
            activation=activation,
            rope=positions == "rope",
            dropout=dropout,
        )
        self.out = nn.Linear(width, 2 * token_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    # ------------------------------------------------------------------ pieces
    def _context(self, cond: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """(B, ctx_len, width): the prefix and start token with their positions, or None."""
        parts = []
        if cond is not None:
            if cond.dim() != 3 or cond.shape[0] != batch or cond.shape[2] != self.width:
                raise ValueError(
                    f"cond must be (B={batch}, P, width={self.width}), got {tuple(cond.shape)}"
                )
            if self.pos is not None and cond.shape[1] != self.prefix_len:
                raise ValueError(
                    f"learned positions need a prefix of {self.prefix_len} tokens, "
                    f"got {cond.shape[1]}"
                )
            parts.append(cond)
        elif self.pos is not None and self.prefix_len:
            raise ValueError(f"this block needs a conditioning prefix of {self.prefix_len} tokens")
        if self.start is not None:
            parts.append(self.start.expand(batch, 1, self.width))
        if not parts:
            return None
        ctx = torch.cat(parts, dim=1)
        if self.pos is not None:
            ctx = ctx + self.pos[:, : ctx.shape[1]]
        return ctx

    def _embed(self, tokens: torch.Tensor, offset: int) -> torch.Tensor:
        h = self.embed(tokens)
        if self.pos is not None:
            h = h + self.pos[:, offset : offset + tokens.shape[1]]
        return h

    def _affine(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states -> (log_sigma, mu), each (B, n, D)."""
        a, mu = self.out(h).chunk(2, dim=-1)
        if self.affine == "softplus":
            a = 4 * torch.tanh(a / 4)
            return torch.log(nn.functional.softplus(a + _SOFTPLUS_SHIFT)), mu
        return a, mu

    def _guided_affine(
        self, h: torch.Tensor, guided: bool, guidance: float, rule: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        log_sigma, mu = self._affine(h)
        if not guided:
            return log_sigma, mu
        half = h.shape[0] // 2
        return combine_guidance(
            log_sigma[:half], mu[:half], log_sigma[half:], mu[half:], guidance, rule
        )

    def _solver_step(
        self, guided: bool, guidance: float, rule: str
    ) -> Callable[[torch.Tensor, KVCache], tuple[torch.Tensor, torch.Tensor]]:
        """The solver's ``step``: cached transformer pass -> (log_sigma, mu), guided if asked."""

        def step(inputs: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.transformer(inputs, cache=cache)
            return self._guided_affine(h, guided, guidance, rule)

        return step

    def _guided_context(
        self, cond: torch.Tensor | None, uncond: torch.Tensor | None, batch: int, rule: str
    ) -> tuple[torch.Tensor | None, bool]:
        if uncond is None:
            return self._context(cond, batch), False
        if rule not in GUIDANCE_RULES:
            raise ValueError(
                f"guidance rule {rule!r} is unknown; choose one of: {', '.join(GUIDANCE_RULES)}"
            )
        if cond is None or cond.shape != uncond.shape:
            raise ValueError("guidance needs cond and uncond prefixes of the same shape")
        return torch.cat([self._context(cond, batch), self._context(uncond, batch)]), True

    # ------------------------------------------------------------------ forward
    def params(
        self,
        x: torch.Tensor,
        cond: torch.Tensor | None = None,
        uncond: torch.Tensor | None = None,
        guidance: float = 0.0,
        guidance_rule: str = "tarflow",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log_sigma, mu) of every transformed token, permuted order, from one masked pass.

        Returns (B, T - first, D) tensors, ``first`` = 1 when token 0 is left unchanged.
        """
        b, t, _ = x.shape
        xp = self.permutation.forward(x)
        ctx, guided = self._guided_context(cond, uncond, b, guidance_rule)
        ctx_len = 0 if ctx is None else ctx.shape[1]
        h = self._embed(xp[:, : t - 1], ctx_len)
        if guided:
            h = torch.cat([h, h])
        if ctx is not None:
            h = torch.cat([ctx, h], dim=1)
        h = self.transformer(h)[:, max(ctx_len - 1, 0) :]
        return self._guided_affine(h, guided, guidance, guidance_rule)

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D) -> (z, logdet): z like x, logdet (B,) the total log|det dz/dx| in nats."""
        if x.dim() != 3 or x.shape[1:] != (self.num_tokens, self.token_dim):
            raise ValueError(
                f"expected tokens (B, {self.num_tokens}, {self.token_dim}), got {tuple(x.shape)}"
            )
        log_sigma, mu = self.params(x, cond)
        xp = self.permutation.forward(x)
        first = xp.shape[1] - mu.shape[1]
        zp = torch.cat([xp[:, :first], (xp[:, first:] - mu) * torch.exp(-log_sigma)], dim=1)
        return self.permutation.inverse(zp), -log_sigma.sum(dim=(1, 2))

    # ------------------------------------------------------------------ reverse
    def _prepare_reverse(
        self,
        z: torch.Tensor,
        cond: torch.Tensor | None,
        uncond: torch.Tensor | None,
        guidance_rule: str,
        given: torch.Tensor | None,
        init: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, int, int, KVCache, torch.Tensor, bool]:
        """Prime the cache with the context and known tokens.

        Returns (z permuted, x permuted with known tokens filled, first unknown position,
        context length, cache, hidden input of the first unknown token (not yet in the cache),
        guided).
        """
        if z.dim() != 3 or z.shape[1:] != (self.num_tokens, self.token_dim):
            raise ValueError(
                f"expected tokens (B, {self.num_tokens}, {self.token_dim}), got {tuple(z.shape)}"
            )
        if init is not None and init.shape != z.shape:
            raise ValueError(f"init must have the shape of z {tuple(z.shape)}, got {init.shape}")
        ctx, guided = self._guided_context(cond, uncond, z.shape[0], guidance_rule)
        ctx_len = 0 if ctx is None else ctx.shape[1]
        start = init.clone() if init is not None else z.clone()
        n_given = 0
        if given is not None:
            n_given = given.shape[1]
            if not self.permutation.keeps_prefix(n_given):
                raise ValueError(f"the permutation does not keep the first {n_given} tokens")
            start[:, :n_given] = given
        zp, xp = self.permutation.forward(z), self.permutation.forward(start)
        if ctx_len == 0 and n_given == 0:  # token 0 is left unchanged
            n_given = 1
            xp[:, :1] = zp[:, :1]
        pieces = [] if ctx is None else [ctx]
        known = self._embed(xp[:, :n_given], ctx_len)
        pieces.append(torch.cat([known, known]) if guided else known)
        seq = torch.cat(pieces, dim=1)
        cache = KVCache()
        if seq.shape[1] > 1:
            self.transformer(seq[:, :-1], cache=cache)
        return zp, xp, n_given, ctx_len, cache, seq[:, -1:], guided

    def reverse(
        self,
        z: torch.Tensor,
        cond: torch.Tensor | None = None,
        uncond: torch.Tensor | None = None,
        guidance: float = 0.0,
        guidance_rule: str = "tarflow",
        solver: JacobiSolver | None = None,
        init: torch.Tensor | None = None,
        given: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, JacobiStats]:
        """The inverse of ``forward``: z (B, T, D) -> (x, what the solver spent).

        ``solver``: a :class:`~flows.jacobi.JacobiSolver` (default: sequential decoding, exact).
        Jacobi starts from ``init`` (default ``z``); its chunks are this block's permuted
        token order.
        """
        solver = solver or JacobiSolver.sequential()
        zp, xp, first, ctx_len, cache, last, guided = self._prepare_reverse(
            z, cond, uncond, guidance_rule, given, init
        )

        def embed(tokens: torch.Tensor, position: int) -> torch.Tensor:
            h = self._embed(tokens, ctx_len + position)
            return torch.cat([h, h]) if guided else h

        step = self._solver_step(guided, guidance, guidance_rule)
        stats = JacobiStats()
        solver.solve(step, embed, zp, xp, cache, last, start=first, stats=stats)
        return self.permutation.inverse(xp), stats
