r"""Conversions that make the normalization papers' equivalence claims checkable.

References:
    Jiang, Gu, Zhu, Pan. "Pre-RMSNorm and Pre-CRMSNorm Transformers: Equivalent and Efficient
    Pre-LN Transformers". NeurIPS 2023, arXiv:2305.14858.
    Baroni, Khara, Schaeffer, Subkhankulov, Heimersheim. "Transformers Don't Need LayerNorm at
    Inference Time: Scaling LayerNorm Removal to GPT-2 XL and the Implications for Mechanistic
    Interpretability". arXiv:2507.02559, 2025 (building on Heimersheim, arXiv:2409.13710).

All conversions act on a :class:`TinyTransformer` (input ``embed`` Linear, a Pre-LN
:class:`~norms.transformer.TransformerStack`, output ``head`` Linear), return a converted deep
copy and leave the input untouched. With ``C = I - 11^T/d`` the centring matrix:

1. :func:`pre_ln_to_pre_rmsnorm` (Pre-LN -> Pre-RMSNorm, output unchanged). LayerNorm ignores
   the mean of its input, so replacing every residual writer (embedding, attention output
   projection, MLP ``fc2``) ``W, b`` by ``C W, C b`` only removes the mean of the residual
   stream, which no Pre-LN reader sees. On a zero-mean stream LN(x) = RMSNorm(x) (same eps).
   Each norm's ``gamma, beta`` fold into the linear that reads it:
   ``W' = W diag(gamma)``, ``b' = b + s W beta`` (``s`` the block's LNS norm scale, 1 for Pre-LN).
2. :func:`pre_rmsnorm_to_pre_crmsnorm` (Pre-RMSNorm -> Pre-CRMSNorm, output unchanged). The
   zero-mean stream lives in d-1 dimensions: keep ``x~ = x[:d-1]`` (``x_d = -sum x~``).
   Writers keep their first d-1 output rows; CRMSNorm
   ``x~ / sqrt((sum x~^2 + (sum x~)^2)/d + eps)`` gives the first d-1 entries of RMSNorm(x);
   a reader ``W`` of the full normalised vector becomes ``W[:, :d-1] - W[:, d-1] 1^T``.
3. LayerNorm removal: :func:`to_fake_layernorm` swaps each LN for a
   :class:`~norms.removal.FakeLayerNorm` (LN whose per-token std becomes one frozen per-layer
   scalar sigma), :func:`calibrate` sets sigma to the mean of ``sqrt(var + eps)`` measured with
   the real LN on data and freezes it, and :func:`fold_fake_layernorm` folds the now affine
   map ``gamma (C x)/sigma + beta`` into the next linear (``W' = W diag(gamma) C / sigma``,
   ``b' = b + s W beta``) and deletes the norm.
   Folding is exact; only the fake-LN step approximates (the papers then fine-tune).

Only pre-norm placements (``pre``, ``lns``) with a final norm are convertible: there every read
of the residual stream goes through a norm.

Example:
    >>> import torch
    >>> from norms.conversions import TinyTransformer, pre_ln_to_pre_rmsnorm
    >>> model = TinyTransformer.build(4, width=16, out_features=3, depth=2, num_heads=2).eval()
    >>> rms = pre_ln_to_pre_rmsnorm(model)
    >>> x = torch.randn(2, 5, 4)
    >>> bool(torch.allclose(model(x), rms(x), atol=1e-5))
    True
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from norms.registry import build_norm
from norms.removal import FakeLayerNorm, fold_norm_into_linear
from norms.transformer import KVCache, TransformerBlock, TransformerStack

__all__ = [
    "TinyTransformer",
    "calibrate",
    "center_residual_stream",
    "fold_fake_layernorm",
    "pre_ln_to_pre_rmsnorm",
    "pre_rmsnorm_to_pre_crmsnorm",
    "to_fake_layernorm",
]


class TinyTransformer(nn.Module):
    """``head(stack(embed(x)))``: the smallest whole model the conversions act on.

    Arguments:
        embed: Linear from the input features to the stream width.
        stack: a :class:`~norms.transformer.TransformerStack`.
        head: Linear from the stream width to the outputs.
    """

    def __init__(self, embed: nn.Linear, stack: TransformerStack, head: nn.Linear) -> None:
        super().__init__()
        self.embed, self.stack, self.head = embed, stack, head

    @classmethod
    def build(
        cls, in_features: int, width: int, out_features: int, depth: int, num_heads: int, **stack
    ) -> TinyTransformer:
        """A fresh model; ``stack`` holds further :class:`TransformerStack` arguments."""
        return cls(
            nn.Linear(in_features, width),
            TransformerStack(width, depth, num_heads, **stack),
            nn.Linear(width, out_features),
        )

    @property
    def stack_width(self) -> int:
        """Width of the residual stream (d, or d - 1 after CRMSNorm compression)."""
        return self.embed.out_features

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        attn_mask: torch.Tensor | None = None,
        causal: bool = True,
    ) -> torch.Tensor:
        return self.head(self.stack(self.embed(x), cache, attn_mask, causal))


# ---------------------------------------------------------------- Pre-LN -> Pre-(C)RMSNorm


def center_residual_stream(model: TinyTransformer) -> TinyTransformer:
    """Copy whose residual writers output zero-mean vectors (C W, C b); Pre-LN output unchanged."""
    _check_pre_norm(model.stack)
    model = copy.deepcopy(model)
    with torch.no_grad():
        for linear in _residual_writers(model):
            linear.weight.sub_(linear.weight.mean(0, keepdim=True))
            linear.bias.sub_(linear.bias.mean())
    return model


def pre_ln_to_pre_rmsnorm(model: TinyTransformer) -> TinyTransformer:
    """Pre-LN -> equivalent Pre-RMSNorm: centre the stream, fold gamma/beta, swap LN for RMS."""
    _check_norms(model.stack, _is_layernorm, "layernorm")
    model = center_residual_stream(model)
    with torch.no_grad():
        for owner, attr, reader, scale in _norm_sites(model):
            norm = getattr(owner, attr)
            _fold_affine(reader, norm.weight, norm.bias, scale)
            rms = build_norm("rmsnorm", model.stack_width, eps=norm.eps, affine=False)
            setattr(owner, attr, rms.to(reader.weight.dtype))
    return model


def pre_rmsnorm_to_pre_crmsnorm(model: TinyTransformer) -> TinyTransformer:
    """Pre-RMSNorm on a zero-mean stream -> equivalent Pre-CRMSNorm on a (d-1)-wide stream."""
    _check_norms(model.stack, _is_rmsnorm, "rmsnorm")
    for linear in _residual_writers(model):
        _check_centred(linear)
    model = copy.deepcopy(model)
    d = model.stack_width
    with torch.no_grad():
        for owner, attr, reader, scale in _norm_sites(model):
            norm = getattr(owner, attr)
            _fold_affine(reader, getattr(norm, "weight", None), None, scale)
            eps = norm.eps if norm.eps is not None else torch.finfo(reader.weight.dtype).eps
            setattr(owner, attr, _crmsnorm(d - 1, eps).to(reader.weight.dtype))
            _replace_linear(model, reader, _compress_reader)
        for linear in _residual_writers(model):
            _replace_linear(model, linear, _compress_writer)
    return model


# ---------------------------------------------------------------- LayerNorm removal


def to_fake_layernorm(model: TinyTransformer) -> TinyTransformer:
    """Copy with every LayerNorm of the stack replaced by a live ``fake_layernorm``.

    Live fake LayerNorms still compute LayerNorm; :func:`calibrate` measures and freezes them.
    """
    _check_norms(model.stack, _is_layernorm, "layernorm")
    model = copy.deepcopy(model)
    for owner, attr, reader, _ in _norm_sites(model):
        fake = FakeLayerNorm.from_layernorm(getattr(owner, attr))
        setattr(owner, attr, fake.to(device=reader.weight.device, dtype=reader.weight.dtype))
    return model


@torch.no_grad()
def calibrate(model: TinyTransformer, batches: Iterable[torch.Tensor], **forward) -> None:
    """Measure each live FakeLayerNorm's token std on ``batches``, then freeze it (in place).

    The model runs with real LayerNorms meanwhile, so every layer sees the activations of the
    original model. The frozen scale is the equal-weight mean over batches of the mean
    ``sqrt(var + eps)`` (the layer's EMA with momentum 1/k at the k-th batch). ``forward``
    holds extra arguments of the model call (e.g. ``causal``).
    """
    fakes = [m for m in model.modules() if isinstance(m, FakeLayerNorm) and not bool(m.frozen)]
    if not fakes:
        raise ValueError("calibrate needs a model with live FakeLayerNorms; run to_fake_layernorm")
    momenta = [fake.momentum for fake in fakes]
    for fake in fakes:
        fake.start_calibration()
    try:
        for k, batch in enumerate(batches, start=1):
            for fake in fakes:
                fake.momentum = 1.0 / k
            model(batch, **forward)
    finally:
        for fake, momentum in zip(fakes, momenta):
            fake.momentum, fake.calibrating = momentum, False
    for fake in fakes:
        fake.freeze()


def fold_fake_layernorm(model: TinyTransformer) -> TinyTransformer:
    """Fold each frozen FakeLayerNorm into the linear reading it; the norms become identity.

    The result equals the fake-LN model exactly (up to rounding) and has no normalization left.
    The fold is :func:`norms.removal.fold_norm_into_linear` applied to the reader with its
    weight scaled by the block's norm scale s (LNS), then divided by s again, since the block
    keeps multiplying the (now identity) norm output by s.
    """
    _check_norms(model.stack, lambda m: isinstance(m, FakeLayerNorm), "fake layernorm")
    model = copy.deepcopy(model)
    d = model.stack_width
    with torch.no_grad():
        for owner, attr, reader, scale in _norm_sites(model):
            scaled = _linear_like(reader, scale * reader.weight, reader.bias)
            folded = fold_norm_into_linear(getattr(owner, attr), scaled)
            folded.weight.div_(scale)
            _replace_linear(model, reader, lambda _, new=folded: new)
            setattr(owner, attr, build_norm("identity", d))
    return model


# ---------------------------------------------------------------- helpers


def _check_pre_norm(stack: TransformerStack) -> None:
    if stack.norm_placement not in ("pre", "lns"):
        raise ValueError(
            "conversions need a pre-norm stack (norm_placement pre or lns), got "
            f"{stack.norm_placement!r}"
        )
    if isinstance(stack.final_norm, nn.Identity) and len(stack.blocks) > 0:
        raise ValueError(
            "conversions need the stack's final norm (final_norm=True): without it the head "
            "reads the raw residual stream"
        )


def _is_layernorm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__ == "LayerNorm"


def _is_rmsnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.RMSNorm) or type(module).__name__ == "RMSNorm"


def _check_norms(stack: TransformerStack, accept, expected: str) -> None:
    _check_pre_norm(stack)
    norms = [stack.final_norm] + [n for b in stack.blocks for n in (b.norm1, b.norm2)]
    wrong = sorted({type(n).__name__ for n in norms if not accept(n)})
    if wrong:
        raise ValueError(f"this conversion needs {expected} norms in the stack, found {wrong}")


def _check_centred(linear: nn.Linear) -> None:
    """A residual writer must output zero-mean vectors (columns and bias sum to zero)."""
    weight, bias = linear.weight.detach(), linear.bias.detach()
    scale = float(weight.abs().max()) + float(bias.abs().max()) + 1e-30
    drift = max(float(weight.sum(0).abs().max()), float(bias.sum().abs()))
    if drift > 100 * torch.finfo(weight.dtype).eps * scale * linear.out_features:
        raise ValueError(
            f"the residual stream is not zero-mean (a writer's outputs sum to up to {drift:.3g}); "
            "convert with pre_ln_to_pre_rmsnorm or center_residual_stream first"
        )


def _residual_writers(model: TinyTransformer) -> list[nn.Linear]:
    writers = [model.embed]
    for block in model.stack.blocks:
        writers += [block.attn.proj, block.mlp.fc2]
    return writers


def _norm_sites(model: TinyTransformer) -> list[tuple[nn.Module, str, nn.Linear, float]]:
    """(owner, norm attribute, linear reading the norm, norm scale in front of it) per norm."""
    sites: list[tuple[nn.Module, str, nn.Linear, float]] = []
    for block in model.stack.blocks:
        assert isinstance(block, TransformerBlock)
        sites.append((block, "norm1", block.attn.qkv, block.norm_scale))
        sites.append((block, "norm2", block.mlp.fc1, block.norm_scale))
    sites.append((model.stack, "final_norm", model.head, 1.0))
    return sites


def _fold_affine(
    linear: nn.Linear, gamma: torch.Tensor | None, beta: torch.Tensor | None, scale: float
) -> None:
    """linear(s (gamma * n + beta)) == linear'(s n): W' = W diag(gamma), b' = b + s W beta."""
    if beta is not None:
        linear.bias.add_(scale * (linear.weight @ beta))
    if gamma is not None:
        linear.weight.mul_(gamma)


def _crmsnorm(num_features: int, eps: float) -> nn.Module:
    """The registry's ``crmsnorm`` without gain (the gains are folded into the readers)."""
    return build_norm("crmsnorm", num_features, eps=eps, affine=False)


def _compress_reader(linear: nn.Linear) -> nn.Linear:
    """A reader of the full normalised vector n, rewritten to read n~ = n[:d-1]."""
    weight = linear.weight[:, :-1] - linear.weight[:, -1:]
    return _linear_like(linear, weight, linear.bias)


def _compress_writer(linear: nn.Linear) -> nn.Linear:
    """A writer of the zero-mean stream, keeping its first d-1 outputs."""
    return _linear_like(linear, linear.weight[:-1], linear.bias[:-1])


def _linear_like(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    new = nn.Linear(weight.shape[1], weight.shape[0], dtype=weight.dtype, device=weight.device)
    new.weight.copy_(weight)
    new.bias.copy_(bias)
    return new


def _replace_linear(root: nn.Module, target: nn.Linear, rewrite) -> None:
    """Swap the submodule ``target`` of ``root`` (found by identity) for ``rewrite(target)``."""
    for module in root.modules():
        for child_name, child in module.named_children():
            if child is target:
                setattr(module, child_name, rewrite(target))
                return
    raise ValueError(f"linear layer {target} is not part of the model")
