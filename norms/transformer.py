"""The shared transformer: attention + MLP blocks whose norm and norm placement are chosen by name.

Placements:

- ``"pre"``: x + f(norm(x)) (Pre-LN, Xiong et al. 2020, arXiv:2002.04745), final norm at the end;
- ``"post"``: norm(x + f(x)) (the original Transformer, Vaswani et al. 2017, arXiv:1706.03762);
- ``"mix"``: Mix-LN (Li et al. 2024, arXiv:2412.13795): the first floor(alpha * depth) blocks
  Post-LN, the rest Pre-LN, alpha = 0.25;
- ``"lns"``: LayerNorm Scaling (Sun et al. 2025, "The Curse of Depth in Large Language Models",
  arXiv:2502.05795): Pre-LN with block l (1-based) multiplying its norm outputs by 1/sqrt(l).

Attention goes through ``torch.nn.functional.scaled_dot_product_attention``. A :class:`KVCache`
supports one-token (and chunked) causal decoding: the tokens passed to ``forward`` hold the
positions ``cache.length ..`` and attend to the whole cache plus, causally, to each other;
``cache.truncate(n)`` rewinds it (Jacobi sampling re-iterates a chunk on top of a fixed prefix).
Rotary position embeddings (Su et al. 2021, arXiv:2104.09864) follow the cache positions.

Example:
    >>> import torch
    >>> from norms.transformer import KVCache, TransformerStack
    >>> stack = TransformerStack(width=32, depth=2, num_heads=4, norm="rmsnorm", rope=True)
    >>> x = torch.randn(2, 6, 32)
    >>> full = stack(x)
    >>> cache = KVCache()
    >>> steps = torch.cat([stack(x[:, t : t + 1], cache=cache) for t in range(6)], dim=1)
    >>> bool(torch.allclose(full, steps, atol=1e-5))
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from norms.registry import available_norms, build_norm, norm_spec
from norms.selu import init_selu_

__all__ = [
    "ATTENTIONS",
    "PLACEMENTS",
    "Attention",
    "KVCache",
    "MLP",
    "TransformerBlock",
    "TransformerStack",
    "layer_placements",
]

PLACEMENTS = ("pre", "post", "mix", "lns")
ACTIVATIONS = ("gelu", "selu")


class KVCache:
    """Keys and values of the positions already processed, one buffer per layer.

    Buffers are preallocated and grow by doubling, so one-token decoding appends in O(1)
    instead of re-concatenating the prefix at every step.
    """

    def __init__(self) -> None:
        self._keys: dict[int, torch.Tensor] = {}
        self._values: dict[int, torch.Tensor] = {}
        self._lengths: dict[int, int] = {}

    @property
    def length(self) -> int:
        """Number of cached positions (those of layer 0, which every layer matches)."""
        return self._lengths.get(0, 0)

    def layer_length(self, layer: int) -> int:
        """Number of positions cached for ``layer`` (differs from ``length`` mid-pass)."""
        return self._lengths.get(layer, 0)

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on."""
        if length < 0 or length > self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {length}")
        for layer in self._lengths:
            self._lengths[layer] = min(self._lengths[layer], length)

    def append(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add (B, H, n, d) keys/values for ``layer``; return all cached keys/values so far."""
        start = self._lengths.get(layer, 0)
        end = start + keys.shape[2]
        buffer = self._keys.get(layer)
        if buffer is None or buffer.shape[2] < end or buffer.shape[:2] != keys.shape[:2]:
            capacity = max(end, 2 * (buffer.shape[2] if buffer is not None else 0), 16)
            new_keys = keys.new_empty(keys.shape[0], keys.shape[1], capacity, keys.shape[3])
            new_values = torch.empty_like(new_keys)
            if buffer is not None and start > 0:
                new_keys[:, :, :start] = buffer[:, :, :start]
                new_values[:, :, :start] = self._values[layer][:, :, :start]
            self._keys[layer], self._values[layer] = new_keys, new_values
        self._keys[layer][:, :, start:end] = keys
        self._values[layer][:, :, start:end] = values
        self._lengths[layer] = end
        return self._keys[layer][:, :, :end], self._values[layer][:, :, :end]


_ROPE_TABLES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def rope_table(
    length: int, half: int, dtype: torch.dtype, device: torch.device, base: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position x frequency for positions 0..length-1 (at least), cached.

    Decoding and Jacobi passes rotate a few positions at a time; recomputing the table on every
    pass cost about a quarter of Jacobi time, so it is built once per (width, dtype, device)
    and grown by doubling. Entries equal ``cos(p * base**(-i / half))``, computed in float32
    (float64 for float64) and stored in ``dtype``.
    """
    key = (half, base, dtype, device)
    cos, sin = _ROPE_TABLES.get(key, (None, None))
    if cos is None or cos.shape[0] < length:
        size = max(length, 2 * (cos.shape[0] if cos is not None else 0), 64)
        # Ordinary tensors even when the first call happens under inference_mode, so a later
        # training step may save them for backward.
        # Angles in at least float32: bf16/fp16 cannot even represent positions above 256.
        exact = torch.float64 if dtype == torch.float64 else torch.float32
        with torch.inference_mode(False):
            freqs = base ** (-torch.arange(half, dtype=exact, device=device) / half)
            angles = torch.arange(size, dtype=exact, device=device)[:, None] * freqs[None, :]
            cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
        _ROPE_TABLES[key] = (cos, sin)
    return cos, sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (..., n, d) features by per-position (n, d // 2) cos/sin (pairs (i, i + d/2))."""
    half = cos.shape[-1]
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return torch.cat([rotated, x[..., 2 * half :]], dim=-1) if x.shape[-1] % 2 else rotated


class Attention(nn.Module):
    """Multi-head softmax attention with optional RoPE and KV cache."""

    def __init__(self, dim: int, num_heads: int, rope: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.rope, self.dropout = rope, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def project_qkv(
        self, x: torch.Tensor, start: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values as (B, H, n, d), rotated for positions start.. when RoPE."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.rope:
            cos, sin = rope_table(start + n, self.head_dim // 2, q.dtype, q.device)
            cos, sin = cos[start : start + n], sin[start : start + n]
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return q, k, v

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
    ) -> torch.Tensor:
        """Combine values; returns (B, H, n, d)."""
        dropout = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal
        )

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        attn_mask: torch.Tensor | None = None,
        causal: bool = True,
    ) -> torch.Tensor:
        b, n, _ = x.shape  # the attention width may differ from the token width
        start = cache.layer_length(layer) if cache is not None else 0
        q, k, v = self.project_qkv(x, start)
        if cache is not None:
            k, v = cache.append(layer, k, v)
        mask, is_causal = _attention_mask(n, k.shape[2], causal, attn_mask, x.device)
        out = self.attend(q, k, v, mask, is_causal)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


def _attention_mask(
    n_new: int,
    n_total: int,
    causal: bool,
    attn_mask: torch.Tensor | None,
    device: torch.device,
) -> tuple[torch.Tensor | None, bool]:
    """A boolean (n_new, n_total) mask (True = may attend), or SDPA's own causal flag."""
    if not causal:
        return attn_mask, False
    if attn_mask is None and n_new == n_total:
        return None, n_new > 1
    if attn_mask is None and n_new == 1:
        return None, False
    offset = n_total - n_new
    rows = torch.arange(n_new, device=device)[:, None] + offset
    mask = torch.arange(n_total, device=device)[None, :] <= rows
    return (mask if attn_mask is None else mask & attn_mask), False


ATTENTIONS: dict[str, Callable[..., nn.Module]] = {"softmax": Attention}


class MLP(nn.Module):
    """Two-layer MLP; ``activation="selu"`` uses LeCun-normal init (self-normalizing nets)."""

    def __init__(self, dim: int, hidden: int, activation: str = "gelu", dropout: float = 0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation {activation!r} is unknown; choose one of: {', '.join(ACTIVATIONS)}"
            )
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        if activation == "selu":
            # Klambauer et al. 2017 (arXiv:1706.02515): weights N(0, 1/fan_in), AlphaDropout.
            init_selu_(self)
            self.act, self.drop = nn.SELU(), nn.AlphaDropout(dropout)
        else:
            self.act, self.drop = nn.GELU(), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        if self.drop.p > 0 and self.training:
            h = self.drop(h)
        return self.fc2(h)


class TransformerBlock(nn.Module):
    """Attention + MLP with residuals; ``norm_placement`` is ``"pre"`` or ``"post"``.

    ``norm_scale`` multiplies the pre-norm outputs (LayerNorm Scaling uses 1/sqrt(l)).
    """

    def __init__(
        self,
        width: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        norm: str = "layernorm",
        norm_placement: str = "pre",
        norm_scale: float = 1.0,
        activation: str = "gelu",
        attention: str = "softmax",
        rope: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if norm_placement not in ("pre", "post"):
            raise ValueError(
                f"block norm_placement {norm_placement!r} is unknown; choose pre or post"
            )
        if attention not in ATTENTIONS:
            known = ", ".join(sorted(ATTENTIONS))
            raise ValueError(f"attention {attention!r} is unknown; choose one of: {known}")
        self.norm_placement, self.norm_scale = norm_placement, norm_scale
        self.norm1, self.norm2 = build_norm(norm, width), build_norm(norm, width)
        self.attn = ATTENTIONS[attention](width, num_heads, rope=rope, dropout=dropout)
        self.mlp = MLP(width, int(width * mlp_ratio), activation, dropout)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        attn_mask: torch.Tensor | None = None,
        causal: bool = True,
    ) -> torch.Tensor:
        if self.norm_placement == "post":
            x = self.norm1(x + self.attn(x, cache, layer, attn_mask, causal))
            return self.norm2(x + self.mlp(x))
        h = self.norm1(x)
        if self.norm_scale != 1.0:
            h = h * self.norm_scale
        x = x + self.attn(h, cache, layer, attn_mask, causal)
        h = self.norm2(x)
        if self.norm_scale != 1.0:
            h = h * self.norm_scale
        return x + self.mlp(h)


def layer_placements(placement: str, depth: int, mix_alpha: float = 0.25) -> list[str]:
    """Per-block "pre"/"post" for a stack placement (``mix``: first floor(alpha L) are post)."""
    if placement not in PLACEMENTS:
        raise ValueError(
            f"norm placement {placement!r} is unknown; choose one of: {', '.join(PLACEMENTS)}"
        )
    if placement == "mix":
        if not 0.0 <= mix_alpha <= 1.0:
            raise ValueError(f"mix_alpha must lie in [0, 1], got {mix_alpha}")
        n_post = math.floor(mix_alpha * depth)
        return ["post"] * n_post + ["pre"] * (depth - n_post)
    return ["post" if placement == "post" else "pre"] * depth


class TransformerStack(nn.Module):
    """A stack of :class:`TransformerBlock` with the norm and its placement chosen by name.

    Arguments:
        width: token width. depth: number of blocks. num_heads: attention heads.
        norm: a token norm from ``norms.available_norms("tokens")``.
        norm_placement: ``pre``, ``post``, ``mix`` (Mix-LN, ``mix_alpha``) or ``lns``.
        activation: ``gelu`` or ``selu`` (self-normalizing MLP).
        attention: ``softmax`` (or another entry of :data:`ATTENTIONS`).
        rope: rotary position embeddings following the cache positions.
        final_norm: add a norm after the last block when it is pre-norm.
    """

    def __init__(
        self,
        width: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        norm: str = "layernorm",
        norm_placement: str = "pre",
        mix_alpha: float = 0.25,
        activation: str = "gelu",
        attention: str = "softmax",
        rope: bool = False,
        dropout: float = 0.0,
        final_norm: bool = True,
    ) -> None:
        super().__init__()
        if "tokens" not in norm_spec(norm).layouts:
            raise ValueError(
                f"norm {norm!r} does not accept channels-last tokens; a transformer needs one of: "
                + ", ".join(available_norms("tokens"))
            )
        placements = layer_placements(norm_placement, depth, mix_alpha)
        self.norm_placement = norm_placement
        self.blocks = nn.ModuleList(
            TransformerBlock(
                width,
                num_heads,
                mlp_ratio,
                norm,
                block_placement,
                norm_scale=1.0 / math.sqrt(i + 1) if norm_placement == "lns" else 1.0,
                activation=activation,
                attention=attention,
                rope=rope,
                dropout=dropout,
            )
            for i, block_placement in enumerate(placements)
        )
        use_final = final_norm and depth > 0 and placements[-1] == "pre"
        self.final_norm = build_norm(norm, width) if use_final else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        attn_mask: torch.Tensor | None = None,
        causal: bool = True,
    ) -> torch.Tensor:
        """Transform (B, n, dim) tokens at positions ``cache.length ..`` (0.. without cache)."""
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer, attn_mask, causal)
        return self.final_norm(x)
