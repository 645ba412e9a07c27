r"""Norm-aware linear attention (NaLa), a linear-time drop-in for the shared transformer.

References:
    Meng, Luo, Huo, Wang, Li, Zhang. "NaLaFormer: Norm-Aware Linear Attention for Transformer
    Models" (v3 title: "Norm x Direction: Restoring the Missing Query Norm in Vision Linear
    Attention"). arXiv:2506.21137, 2025.
    Katharopoulos, Vyas, Pappas, Fleuret. "Transformers are RNNs: Fast Autoregressive
    Transformers with Linear Attention". ICML 2020, arXiv:2006.16236 (causal cumulative sums
    and the recurrent state).

Linear attention replaces ``softmax(q k^T)`` by a kernel ``phi(q) . phi(k)`` and divides by the
row sum; the query norm then cancels, so a linear-attention row cannot become spikier when its
query grows, as a softmax row does. NaLa splits each query into norm and direction and feeds the
norm back through the power of the feature map. Per head, with head width ``d``:

.. math::

    p(q) = \lambda \, (\tfrac12 + \tanh \lVert q \rVert), \qquad
    \phi_q(q) = \Big[ \big(\tfrac{\mathrm{relu}(q)}{\lVert q \rVert}\big)^{p(q)},\;
                      \big(\tfrac{\mathrm{relu}(-q)}{\lVert q \rVert}\big)^{p(q)} \Big]
    \in \mathbb{R}_{\ge 0}^{2d},

.. math::

    \phi_k(k) = \big[ \mathrm{relu}(k)^{\kappa},\; \mathrm{relu}(-k)^{\kappa} \big],

i.e. the query direction is split by sign (positive and negative parts meet the keys' parts of
the same sign, so opposite-signed coordinates inhibit instead of being thrown away, as
``elu + 1`` or ``relu`` maps do), its entries (all in [0, 1]) are raised to a power that grows
with ``||q||``, which sharpens the distribution like a softmax temperature. Defaults follow the
authors' released code: ``lambda = 3`` (``power_scale``), ``kappa = 3`` (``key_power``).
The output of position i over the keys j it may see (``j <= i`` when causal, all otherwise),
``c_i`` of them, is

.. math::

    o_i = \frac{\tfrac{1}{c_i}\sum_j \big(\phi_q(q_i)\cdot\phi_k(k_j)\big)\, v_j}
               {\tfrac{1}{c_i}\sum_j \phi_q(q_i)\cdot\phi_k(k_j) + \epsilon},
    \qquad \epsilon = 10^{-6},

computed in linear time from the state ``S = sum_j phi_k(k_j) v_j^T`` (``2d x d``) and the
normaliser ``z = sum_j phi_k(k_j)``: chunk by chunk for the causal pass (exact within a chunk,
states carried across chunks), all at once for the non-causal pass, and one token at a time
from a :class:`RecurrentStateCache`. The weights are non-negative and each row sums to
``1 - O(eps)``: the output is a convex combination of the values (up to the eps shrinkage).

With ``rope=True`` the rotary embedding rotates the *features* in the numerator only
(``rotary(phi_q(q_i), i) . rotary(phi_k(k_j), j)``), the normaliser stays unrotated, as in the
authors' code; the weights are then no longer guaranteed non-negative. Departures from the
released vision code, whose extra parts are architecture rather than attention: no depthwise
"LePE" convolution, no output gate and LayerNorm, and ``dropout`` applies to the attention
output (there is no attention matrix to drop).

Example:
    >>> import torch
    >>> from norms.linear_attention import RecurrentStateCache
    >>> from norms.transformer import TransformerStack
    >>> stack = TransformerStack(dim=32, depth=2, num_heads=4, attention="nala").eval()
    >>> x = torch.randn(2, 6, 32)
    >>> cache = RecurrentStateCache()
    >>> steps = torch.cat([stack(x[:, t : t + 1], cache=cache) for t in range(6)], dim=1)
    >>> bool(torch.allclose(stack(x), steps, atol=1e-5))
    True
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from norms.transformer import ATTENTIONS, KVCache, apply_rotary, rope_table

__all__ = [
    "LinearAttentionState",
    "NormAwareLinearAttention",
    "RecurrentStateCache",
    "key_features",
    "query_features",
]


def query_features(q: torch.Tensor, power_scale: float = 3.0) -> torch.Tensor:
    """phi_q: sign-split direction of q raised to ``power_scale * (1/2 + tanh ||q||)``.

    Maps (..., d) queries to non-negative (..., 2d) features.
    """
    norm = q.norm(dim=-1, keepdim=True)
    power = power_scale * (0.5 + torch.tanh(norm))
    direction = q / norm.clamp_min(torch.finfo(q.dtype).tiny)
    return torch.cat([F.relu(direction), F.relu(-direction)], dim=-1).pow(power)


def key_features(k: torch.Tensor, key_power: float = 3.0) -> torch.Tensor:
    """phi_k: sign-split key raised to the fixed ``key_power``; (..., d) -> (..., 2d), >= 0."""
    return torch.cat([F.relu(k), F.relu(-k)], dim=-1).pow(key_power)


@dataclass
class LinearAttentionState:
    """Running sums of one layer: S = sum phi_k v^T (B, H, F, d), z = sum phi_k (B, H, F).

    ``length`` counts the positions summed (the ``c`` of the normaliser).
    """

    values: torch.Tensor
    normaliser: torch.Tensor
    length: int


class RecurrentStateCache(KVCache):
    """A decoding cache that keeps the linear-attention running sums instead of keys/values.

    One-token decoding then costs O(1) in the prefix length. Softmax layers sharing the cache
    still use the inherited key/value buffers. A running sum cannot forget positions, so
    :meth:`truncate` rewinds to the state saved at the end of one of the last ``max_snapshots``
    forward calls (the prefix/guess pattern of Jacobi decoding); other lengths raise.
    """

    def __init__(self, max_snapshots: int = 16) -> None:
        super().__init__()
        if max_snapshots < 1:
            raise ValueError(f"max_snapshots must be >= 1, got {max_snapshots}")
        self._states: dict[int, LinearAttentionState] = {}
        self._history: dict[int, deque[LinearAttentionState]] = {}
        self.max_snapshots = max_snapshots

    @property
    def length(self) -> int:
        return self.layer_length(0)

    def layer_length(self, layer: int) -> int:
        if layer in self._states:
            return self._states[layer].length
        return super().layer_length(layer)

    def state(self, layer: int) -> LinearAttentionState | None:
        """The running sums of ``layer`` (None before its first token)."""
        return self._states.get(layer)

    def update(self, layer: int, state: LinearAttentionState) -> None:
        """Replace the running sums of ``layer``, remembering the previous ones for rewinds."""
        previous = self._states.get(layer)
        if previous is not None:
            history = self._history.setdefault(layer, deque(maxlen=self.max_snapshots))
            history.append(previous)
        self._states[layer] = state

    def truncate(self, length: int) -> None:
        if length < 0 or length > self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {length}")
        for layer in list(self._states):
            current = self._states[layer]
            history = self._history.get(layer, deque())
            while current.length > length and history:
                current = history.pop()
            if current.length == length:
                self._states[layer] = current
            elif length == 0:
                del self._states[layer]
                history.clear()
            else:
                kept = sorted({0, current.length, *(s.length for s in history)})
                raise ValueError(
                    f"a recurrent state cannot rewind to length {length}; "
                    f"the saved lengths are {kept}"
                )
        for layer in self._lengths:
            self._lengths[layer] = min(self._lengths[layer], length)


class NormAwareLinearAttention(nn.Module):
    """Multi-head norm-aware linear attention with the constructor/forward of ``Attention``.

    Arguments:
        dim: token width (and attention width). num_heads: heads, dividing ``dim``.
        rope: rotary embedding of the features in the numerator (see the module docstring).
        dropout: dropout on the attention output while training.
        power_scale: lambda of the query power ``lambda (1/2 + tanh ||q||)``.
        key_power: fixed power of the key features.
        eps: added to the (mean) normaliser.
        chunk_size: positions processed exactly per chunk of the causal pass.

    Caches: a :class:`RecurrentStateCache` keeps the running sums (O(1) per decoded token);
    a plain :class:`~norms.transformer.KVCache` keeps raw keys/values and rebuilds the sums of
    the prefix on every call (O(prefix), but any ``truncate`` works). An explicit boolean
    ``attn_mask`` switches to the quadratic form (it needs every key).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        rope: bool = False,
        dropout: float = 0.0,
        power_scale: float = 3.0,
        key_power: float = 3.0,
        eps: float = 1e-6,
        chunk_size: int = 64,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.rope, self.power_scale, self.key_power = rope, power_scale, key_power
        self.eps, self.chunk_size = eps, chunk_size
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw queries, keys and values as (B, H, n, d)."""
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def _features(
        self, q: torch.Tensor, k: torch.Tensor, q_start: int, k_start: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(phi_q, phi_k) for the normaliser and their (rotated when RoPE) numerator twins."""
        phi_q = query_features(q, self.power_scale)
        phi_k = key_features(k, self.key_power)
        if not self.rope:
            return phi_q, phi_k, phi_q, phi_k
        # Slices of the cached table, as in Attention.project_qkv: no position tensor to gather
        # with, and no positions.max() read back from the device on every call.
        q_end, k_end = q_start + q.shape[2], k_start + k.shape[2]
        cos, sin = rope_table(max(q_end, k_end), phi_q.shape[-1] // 2, q.dtype, q.device)
        num_q = apply_rotary(phi_q, cos[q_start:q_end], sin[q_start:q_end])
        num_k = apply_rotary(phi_k, cos[k_start:k_end], sin[k_start:k_end])
        return phi_q, phi_k, num_q, num_k

    def attention_weights(self, x: torch.Tensor, causal: bool = True) -> torch.Tensor:
        """The (B, H, n, n) attention matrix the linear-time pass applies (quadratic; analysis)."""
        q, k, _ = self.project(x)
        phi_q, phi_k, num_q, num_k = self._features(q, k, 0, 0)
        n = x.shape[1]
        allowed = _allowed(n, n, causal, None, x.device)
        scores = (num_q @ num_k.transpose(-2, -1)) * allowed
        totals = ((phi_q @ phi_k.transpose(-2, -1)) * allowed).sum(-1, keepdim=True)
        return scores / (totals + self.eps * allowed.sum(-1, keepdim=True))

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        attn_mask: torch.Tensor | None = None,
        causal: bool = True,
    ) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.project(x)
        if isinstance(cache, RecurrentStateCache):
            if attn_mask is not None:
                raise ValueError(
                    "an explicit attn_mask needs every key; use a KVCache, not a "
                    "RecurrentStateCache, with nala attention and a mask"
                )
            state = cache.state(layer)
            start = state.length if state is not None else 0
            phi_q, phi_k, num_q, num_k = self._features(q, k, start, start)
            out, state = self._linear(phi_q, num_q, phi_k, num_k, v, state, causal)
            cache.update(layer, state)
        else:
            start = cache.layer_length(layer) if cache is not None else 0
            if cache is not None:
                # Raw keys/values (RoPE acts on features here, so keys are cached unrotated).
                k, v = cache.append(layer, k, v)
            phi_q, phi_k, num_q, num_k = self._features(q, k, start, 0)
            if attn_mask is not None:
                out = self._masked(phi_q, num_q, phi_k, num_k, v, causal, attn_mask)
            else:
                prefix = _prefix_state(phi_k[:, :, :start], num_k[:, :, :start], v[:, :, :start])
                rest = (phi_k[:, :, start:], num_k[:, :, start:], v[:, :, start:])
                out, _ = self._linear(phi_q, num_q, rest[0], rest[1], rest[2], prefix, causal)
        out = self.drop(out.transpose(1, 2).reshape(b, n, -1))
        return self.proj(out)

    def _linear(
        self,
        phi_q: torch.Tensor,
        num_q: torch.Tensor,
        phi_k: torch.Tensor,
        num_k: torch.Tensor,
        v: torch.Tensor,
        state: LinearAttentionState | None,
        causal: bool,
    ) -> tuple[torch.Tensor, LinearAttentionState]:
        """Linear-time attention of new queries over (state's positions + new keys)."""
        b, h, n, f = phi_k.shape
        if state is None:
            state = LinearAttentionState(v.new_zeros(b, h, f, v.shape[-1]), v.new_zeros(b, h, f), 0)
        values, normaliser, length = state.values, state.normaliser, state.length
        if not causal:
            values = values + num_k.transpose(-2, -1) @ v
            normaliser = normaliser + phi_k.sum(2)
            length = length + n
            numerator = num_q @ values
            denominator = (phi_q @ normaliser.unsqueeze(-1)).squeeze(-1) + self.eps * length
            out = numerator / denominator.unsqueeze(-1)
            return out, LinearAttentionState(values, normaliser, length)
        outs = []
        width = min(self.chunk_size, n)
        full_tril = torch.ones(width, width, dtype=torch.bool, device=v.device).tril()
        for s in range(0, n, self.chunk_size):
            e = min(s + self.chunk_size, n)
            tril = full_tril[: e - s, : e - s]  # a leading block of a tril is a tril
            intra = (num_q[:, :, s:e] @ num_k[:, :, s:e].transpose(-2, -1)) * tril
            intra_z = (phi_q[:, :, s:e] @ phi_k[:, :, s:e].transpose(-2, -1)) * tril
            numerator = num_q[:, :, s:e] @ values + intra @ v[:, :, s:e]
            denominator = (phi_q[:, :, s:e] @ normaliser.unsqueeze(-1)).squeeze(-1)
            counts = torch.arange(length + 1, length + e - s + 1, device=v.device)
            denominator = denominator + intra_z.sum(-1) + self.eps * counts.to(v.dtype)
            outs.append(numerator / denominator.unsqueeze(-1))
            values = values + num_k[:, :, s:e].transpose(-2, -1) @ v[:, :, s:e]
            normaliser = normaliser + phi_k[:, :, s:e].sum(2)
            length = length + e - s
        return torch.cat(outs, dim=2), LinearAttentionState(values, normaliser, length)

    def _masked(
        self,
        phi_q: torch.Tensor,
        num_q: torch.Tensor,
        phi_k: torch.Tensor,
        num_k: torch.Tensor,
        v: torch.Tensor,
        causal: bool,
        attn_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Quadratic form for an explicit boolean mask (True = may attend)."""
        n, total = phi_q.shape[2], phi_k.shape[2]
        if attn_mask.dtype != torch.bool:
            raise ValueError(
                "nala attention takes a boolean attn_mask (True = may attend), "
                f"got {attn_mask.dtype}"
            )
        allowed = _allowed(n, total, causal, attn_mask, v.device).to(v.dtype)
        numerator = ((num_q @ num_k.transpose(-2, -1)) * allowed) @ v
        totals = ((phi_q @ phi_k.transpose(-2, -1)) * allowed).sum(-1)
        return numerator / (totals + self.eps * allowed.sum(-1)).unsqueeze(-1)


def _prefix_state(
    phi_k: torch.Tensor, num_k: torch.Tensor, v: torch.Tensor
) -> LinearAttentionState | None:
    """Running sums over cached keys/values (None for an empty prefix)."""
    if phi_k.shape[2] == 0:
        return None
    return LinearAttentionState(num_k.transpose(-2, -1) @ v, phi_k.sum(2), phi_k.shape[2])


def _allowed(
    n_new: int,
    n_total: int,
    causal: bool,
    attn_mask: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """Boolean (n_new, n_total) visibility: new tokens sit at the end of the key sequence."""
    allowed = torch.ones(n_new, n_total, dtype=torch.bool, device=device)
    if causal:
        rows = torch.arange(n_new, device=device)[:, None] + (n_total - n_new)
        allowed = torch.arange(n_total, device=device)[None, :] <= rows
    return allowed if attn_mask is None else allowed & attn_mask


ATTENTIONS["nala"] = NormAwareLinearAttention
