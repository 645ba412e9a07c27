"""Batch-Channel Normalization and Weight Standardization.

Reference:
    Qiao, Wang, Liu, Shen, Yuille. Micro-Batch Training with Batch-Channel Normalization and
    Weight Standardization. arXiv:1903.10520, 2019.

- BCN on (B, C, *): BatchNorm with affine and running statistics, then a per-sample GroupNorm
  without affine, then a per-GROUP affine (one gain and one bias per channel group).
- WS: a conv/linear weight W is used as W_hat = (W - mean) / (std + 1e-5) per output channel,
  mean and std over (in, *kernel); std is the unbiased one, as in the paper's code. Available as
  a parametrization (:func:`weight_standardization`) or as :class:`WSConv2d`.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn.utils import parametrize

from norms.basic import _largest_divisor_at_most, _track_batch_stats
from norms.moments import moment_affine
from norms.registry import check_layout, in_dtype_of, register_norm

__all__ = [
    "BatchChannelNorm",
    "WSConv2d",
    "WeightStandardization",
    "remove_weight_standardization",
    "standardize_weight",
    "weight_standardization",
]


@register_norm("batchchannelnorm", layouts=("maps",), running_stats=True)
class BatchChannelNorm(nn.Module):
    """BCN (Qiao et al. 2019): BatchNorm -> per-sample GroupNorm -> per-group affine. Maps.

    Arguments:
        num_features: channels C.
        num_groups: channel groups (the largest divisor of C that is <= num_groups is used).
        eps: added to both variances.
        momentum: BatchNorm running-statistics factor.
    """

    def __init__(
        self, num_features: int, num_groups: int = 32, eps: float = 1e-5, momentum: float = 0.1
    ) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.num_groups = _largest_divisor_at_most(num_features, num_groups)
        self.bn_weight = nn.Parameter(torch.ones(num_features))
        self.bn_bias = nn.Parameter(torch.zeros(num_features))
        self.weight = nn.Parameter(torch.ones(self.num_groups))
        self.bias = nn.Parameter(torch.zeros(self.num_groups))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layout(x, self.num_features, "maps", "batchchannelnorm")
        b, c = x.shape[:2]
        flat = x.reshape(b, c, -1).contiguous()
        params = in_dtype_of(
            x, self.bn_weight, self.bn_bias, self.weight, self.bias,
            self.running_mean, self.running_var,
        )  # fmt: skip
        coefficients = partial(
            _bcn_coefficients, groups=self.num_groups, eps=self.eps, training=self.training
        )
        y, mean, var = moment_affine(flat, coefficients, *params)
        if self.training:
            self.num_batches_tracked += 1
            _track_batch_stats(self.running_mean, self.running_var, mean, var, x, self.momentum)
        return y.view(x.shape)


def _bcn_coefficients(
    m1, m2, bn_weight, bn_bias, weight, bias, running_mean, running_var, *, groups, eps, training
):
    """(A, B, batch mean, batch variance) of BCN as y = A x + B per (sample, channel), from the
    per-(sample, channel) mean m1 and mean square m2 of x."""
    if training:
        mean = m1.mean(0)
        var = (m2.mean(0) - mean * mean).clamp_min(0.0)
    else:
        mean, var = running_mean, running_var
    a = bn_weight * torch.rsqrt(var + eps)
    shift = bn_bias - mean * a
    # z = a x + shift (the BatchNorm output): its per-(sample, channel) mean and mean square,
    # then its per-(sample, group) mean and variance.
    z1 = a * m1 + shift
    z2 = a * a * m2 + 2.0 * a * shift * m1 + shift * shift
    per = z1.shape[1] // groups
    mu = z1.view(-1, groups, per).mean(2)
    var_g = (z2.view(-1, groups, per).mean(2) - mu * mu).clamp_min(0.0)
    gain = (weight * torch.rsqrt(var_g + eps)).repeat_interleave(per, 1)
    offset = bias.repeat_interleave(per) - gain * mu.repeat_interleave(per, 1)
    return gain * a, gain * shift + offset, mean, var


def standardize_weight(weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(W - mean) / (std + eps) per output channel (dim 0), std unbiased over the rest."""
    flat = weight.reshape(weight.shape[0], -1)
    std, mean = torch.std_mean(flat, dim=1, keepdim=True)
    return ((flat - mean) / (std + eps)).view_as(weight)


class WeightStandardization(nn.Module):
    """Parametrization W -> standardize_weight(W) (use via :func:`weight_standardization`)."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return standardize_weight(weight, self.eps)


_WS_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def weight_standardization(module: nn.Module, eps: float = 1e-5) -> nn.Module:
    """Standardize the weight of ``module`` (a conv/linear) or of every conv/linear inside it.

    Uses ``torch.nn.utils.parametrize``, so the stored parameter becomes
    ``parametrizations.weight.original``; :func:`remove_weight_standardization` bakes it back.

    Example:
        >>> conv = weight_standardization(torch.nn.Conv2d(3, 8, 3))
        >>> w = conv.weight.flatten(1)
        >>> bool(w.mean(1).abs().max() < 1e-6)
        True
    """
    targets = [m for m in module.modules() if isinstance(m, _WS_TYPES)]
    if not targets:
        raise ValueError(
            f"weight_standardization: {type(module).__name__} holds no Linear/Conv1d/2d/3d layer"
        )
    for m in targets:
        if not parametrize.is_parametrized(m, "weight"):
            parametrize.register_parametrization(m, "weight", WeightStandardization(eps))
    return module


def remove_weight_standardization(module: nn.Module) -> nn.Module:
    """Replace each standardized weight by its current standardized value (plain layers again)."""
    for m in module.modules():
        if isinstance(m, _WS_TYPES) and parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return module


class WSConv2d(nn.Conv2d):
    """nn.Conv2d whose kernel is standardized per output channel at every forward."""

    def __init__(self, *args, ws_eps: float = 1e-5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ws_eps = ws_eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, standardize_weight(self.weight, self.ws_eps), self.bias)
