"""EvoNorm-B0 and EvoNorm-S0: evolved normalization-activation layers.

Reference:
    Liu, Brock, Simonyan, Le. Evolving Normalization-Activation Layers. NeurIPS 2020,
    arXiv:2004.02967.

For channels-first maps (B, C, *) of any spatial rank:

- B0: y = x / max(sqrt(var_{B,*}(x) + eps), v * x + sqrt(var_{*}(x) + eps)) * gamma + beta,
  the batch variance per channel in training and ``running_var`` in eval (updated with the
  unbiased batch variance, like timm's ``EvoNorm2dB0``; default eps 1e-3 as in timm).
- S0: y = x * sigmoid(v * x) / sqrt(groupvar(x) + eps) * gamma + beta, group variance per sample
  over (C / groups, *), no running statistics (groups 32 as in timm; here the largest divisor of
  C that is <= groups, where timm requires C % groups == 0).

All statistics are biased variances in the input dtype (timm casts them to float32).
"""

from __future__ import annotations

import torch
from torch import nn

from norms.basic import _largest_divisor_at_most
from norms.registry import check_layout, register_norm

__all__ = ["EvoNormB0", "EvoNormS0"]


def _channel_view(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return p.view(1, -1, *([1] * (x.dim() - 2)))


@register_norm("evonorm_b0", layouts=("maps",), running_stats=True)
class EvoNormB0(nn.Module):
    """EvoNorm-B0 (batch-dependent, running variance at eval) on (B, C, *) maps.

    Arguments:
        num_features: channels C.
        eps: added inside both square roots.
        momentum: running-variance update factor (0.1 = BatchNorm's convention).
        apply_act: use the v * x + instance-std branch (False = plain affine).
    """

    def __init__(
        self, num_features: int, eps: float = 1e-3, momentum: float = 0.1, apply_act: bool = True
    ) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.v = nn.Parameter(torch.ones(num_features)) if apply_act else None
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layout(x, self.num_features, "maps", "evonorm_b0")
        if self.v is None:
            return torch.addcmul(_channel_view(self.bias, x), x, _channel_view(self.weight, x))
        flat = x.reshape(x.shape[0], self.num_features, -1)
        if self.training:
            var = flat.transpose(0, 1).reshape(self.num_features, -1).var(1, correction=0)
            n = flat.numel() / self.num_features
            with torch.no_grad():
                unbiased = var * (n / max(n - 1.0, 1.0))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        else:
            var = self.running_var
        left = torch.sqrt(var + self.eps).view(1, -1, 1)
        inst_std = torch.sqrt(flat.var(2, correction=0, keepdim=True) + self.eps)
        right = torch.addcmul(inst_std, flat, self.v.view(1, -1, 1))
        y = flat / torch.maximum(right, left)
        y = torch.addcmul(self.bias.view(1, -1, 1), y, self.weight.view(1, -1, 1))
        return y.view(x.shape)


@register_norm("evonorm_s0", layouts=("maps",))
class EvoNormS0(nn.Module):
    """EvoNorm-S0 (sample-based, no running statistics) on (B, C, *) maps.

    Arguments:
        num_features: channels C.
        groups: channel groups (the largest divisor of C that is <= groups is used).
        eps: added to the group variance.
        apply_act: use the x * sigmoid(v x) / group-std branch (False = plain affine).
    """

    def __init__(
        self, num_features: int, groups: int = 32, eps: float = 1e-5, apply_act: bool = True
    ) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.groups = _largest_divisor_at_most(num_features, groups)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.v = nn.Parameter(torch.ones(num_features)) if apply_act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layout(x, self.num_features, "maps", "evonorm_s0")
        if self.v is None:
            return torch.addcmul(_channel_view(self.bias, x), x, _channel_view(self.weight, x))
        b, g = x.shape[0], self.groups
        flat = x.reshape(b, self.num_features, -1)
        group_var = flat.reshape(b, g, -1).var(2, correction=0, keepdim=True)
        # gamma / std folded into one (B, C, 1) factor, so the full-size work is sigmoid, mul, fma.
        inv_std = torch.rsqrt(group_var + self.eps).repeat_interleave(self.num_features // g, 1)
        scale = inv_std * self.weight.view(1, -1, 1)
        gated = flat * torch.sigmoid(flat * self.v.view(1, -1, 1))
        y = torch.addcmul(self.bias.view(1, -1, 1), gated, scale)
        return y.view(x.shape)
