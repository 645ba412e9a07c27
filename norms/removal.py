"""LayerNorm removal: a "fake" LayerNorm with a frozen scale, and folding it into a Linear.

References:
    Heimersheim. You can remove GPT2's LayerNorm by fine-tuning. arXiv:2409.13710, 2024.
    Baroni, Khara, Schaeffer, Subkhankulov, Heimersheim. Transformers Don't Need LayerNorm at
    Inference Time. arXiv:2507.02559, 2025.

:class:`FakeLayerNorm` (registry name ``fake_layernorm``, tokens) has three states:

1. live (default): exactly LayerNorm;
2. calibrating (:meth:`FakeLayerNorm.start_calibration`): still LayerNorm, and every forward
   updates ``scale``, an EMA of the measured per-token std sqrt(var + eps) averaged over tokens
   (the first calibration batch sets it directly);
3. frozen (:meth:`FakeLayerNorm.freeze`): y = gamma (x - mean(x)) / scale + beta, an affine map
   of x (fine-tune in this state, as the papers do).

:func:`fold_norm_into_linear` then removes a frozen fake LayerNorm (or any eval-mode norm with a
per-channel ``fused_affine()``, e.g. PowerNorm and UnifiedNorm) from in front of a Linear:
``fold_norm_into_linear(norm, linear)(x) == linear(norm(x))``.
"""

from __future__ import annotations

import torch
from torch import nn

from norms.reductions import column_sums
from norms.registry import check_layout, register_norm

__all__ = ["FakeLayerNorm", "fold_norm_into_linear", "norm_affine"]


class _FrozenLayerNorm(torch.autograd.Function):
    """y = a (x - mean(x)) + b over the last dim, a = gamma / scale (one fresh buffer per pass)."""

    @staticmethod
    def forward(ctx, x, a, bias):
        rows = x.contiguous().view(-1, x.shape[-1])
        mean = rows.mean(1, keepdim=True)
        ctx.save_for_backward(rows, mean, a)
        centred = torch.sub(rows, mean)
        return torch.addcmul(bias, centred, a, out=centred).view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        rows, mean, a = ctx.saved_tensors
        dy2 = dy.contiguous().view_as(rows)
        sum_dyx, grad_bias = column_sums(dy2, rows)
        # sum over rows of dy * (x - mean) = sum dy * x - mean^T dy.
        grad_a = sum_dyx - torch.mv(dy2.t(), mean.view(-1))
        grad_x = torch.mul(dy2, a)
        grad_x.sub_(grad_x.mean(1, keepdim=True))
        return grad_x.view(dy.shape), grad_a, grad_bias


@register_norm("fake_layernorm", layouts=("tokens",))
class FakeLayerNorm(nn.Module):
    """LayerNorm whose divisor can be calibrated and frozen to a per-layer scalar. Tokens.

    Arguments:
        num_features: channels C.
        eps: LayerNorm eps (also inside the measured std).
        momentum: EMA factor of the calibration update (scale <- (1-m) scale + m std).
        affine: learn gamma and beta.

    Example:
        >>> import torch
        >>> norm = FakeLayerNorm(8).start_calibration()
        >>> _ = norm(torch.randn(16, 8) * 3.0)
        >>> y = norm.freeze()(torch.randn(4, 8))
        >>> 2.0 < float(norm.scale) < 4.0
        True
    """

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True
    ) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features), requires_grad=affine)
        self.bias = nn.Parameter(torch.zeros(num_features), requires_grad=affine)
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))
        self.register_buffer("calibration_steps", torch.zeros((), dtype=torch.long))
        self.calibrating = False

    @classmethod
    def from_layernorm(cls, layer: nn.Module) -> FakeLayerNorm:
        """A live fake LayerNorm with the gamma/beta/eps of ``layer`` (torch's or normkit's)."""
        width = getattr(layer, "num_features", None) or layer.normalized_shape[-1]
        fake = cls(int(width), eps=layer.eps)
        if getattr(layer, "weight", None) is not None:
            fake = fake.to(device=layer.weight.device, dtype=layer.weight.dtype)
        with torch.no_grad():
            if getattr(layer, "weight", None) is not None:
                fake.weight.copy_(layer.weight)
            if getattr(layer, "bias", None) is not None:
                fake.bias.copy_(layer.bias)
        return fake

    def start_calibration(self) -> FakeLayerNorm:
        """Measure the std (EMA) at every forward from now on; the output stays LayerNorm."""
        if bool(self.frozen):
            raise ValueError("fake_layernorm: already frozen; calibration must come before")
        self.calibrating = True
        return self

    def freeze(self) -> FakeLayerNorm:
        """Divide by the calibrated scalar from now on (the layer becomes affine)."""
        if int(self.calibration_steps) == 0:
            raise ValueError("fake_layernorm: freeze() before any calibration forward")
        self.calibrating = False
        self.frozen.fill_(True)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layout(x, self.num_features, "tokens", "fake_layernorm")
        if bool(self.frozen):
            return _FrozenLayerNorm.apply(x, self.weight / self.scale, self.bias)
        if self.calibrating:
            with torch.no_grad():
                std = torch.sqrt(x.var(-1, correction=0) + self.eps).mean()
                rate = 1.0 if int(self.calibration_steps) == 0 else self.momentum
                self.scale.lerp_(std.to(self.scale.dtype), rate)
                self.calibration_steps += 1
        return nn.functional.layer_norm(x, (self.num_features,), self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        state = "frozen" if bool(self.frozen) else ("calibrating" if self.calibrating else "live")
        return f"{self.num_features}, eps={self.eps}, state={state}, scale={float(self.scale):.4g}"


def norm_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """A norm that is affine in its current state as (scale, shift, centred).

    y = scale * (x - mean(x) if centred else x) + shift, per channel. Accepts a frozen
    :class:`FakeLayerNorm`, an identity, or a layer in eval mode with ``fused_affine()``.
    """
    if isinstance(norm, FakeLayerNorm):
        if not bool(norm.frozen):
            raise ValueError("fold: fake_layernorm must be frozen (call .freeze()) before folding")
        return norm.weight / norm.scale, norm.bias, True
    if isinstance(norm, nn.Identity):
        width = getattr(norm, "num_features", None)
        if width is None:
            raise ValueError("fold: an nn.Identity norm needs a num_features attribute")
        one = torch.ones(width)
        return one, torch.zeros_like(one), False
    if hasattr(norm, "fused_affine"):
        if norm.training:
            raise ValueError(
                f"fold: {type(norm).__name__} uses batch statistics in train mode; call .eval()"
            )
        scale, shift = norm.fused_affine()
        return scale, shift, False
    raise ValueError(
        f"fold: {type(norm).__name__} is not affine; expected a frozen FakeLayerNorm, an "
        "identity, or an eval-mode norm with fused_affine() (powernorm, unifiednorm)"
    )


@torch.no_grad()
def fold_norm_into_linear(norm: nn.Module, linear: nn.Linear) -> nn.Linear:
    """A new nn.Linear equal to ``linear(norm(x))`` for every x (norm must be affine now).

    With norm(x) = s * (P x) + t, P the centring projection (I - 11^T/C) for a fake LayerNorm
    and I otherwise: W' = (W diag(s)) P (every row of W diag(s) minus its mean), b' = W t + b.
    """
    scale, shift, centred = norm_affine(norm)
    if linear.in_features != scale.shape[0]:
        raise ValueError(
            f"fold: norm has {scale.shape[0]} channels but linear expects "
            f"{linear.in_features} inputs"
        )
    weight = linear.weight * scale.to(linear.weight)
    if centred:
        weight = weight - weight.mean(1, keepdim=True)
    bias = linear.weight @ shift.to(linear.weight)
    if linear.bias is not None:
        bias = bias + linear.bias
    folded = nn.Linear(
        linear.in_features,
        linear.out_features,
        bias=True,
        device=linear.weight.device,
        dtype=linear.weight.dtype,
    )
    folded.weight.copy_(weight)
    folded.bias.copy_(bias)
    return folded
