"""The standard layers: LayerNorm, RMSNorm, GroupNorm, BatchNorm and identity.

References:
    Ba, Kiros, Hinton. Layer Normalization. arXiv:1607.06450, 2016.
    Zhang, Sennrich. Root Mean Square Layer Normalization. NeurIPS 2019, arXiv:1910.07467.
    Wu, He. Group Normalization. ECCV 2018, arXiv:1803.08494.
    Ioffe, Szegedy. Batch Normalization. ICML 2015, arXiv:1502.03167.

All arithmetic happens in the input's dtype (no float32 casts), so float64 tests are exact.
RMSNorm runs through :func:`norms.functional.rms_norm`, which reuses the fused LayerNorm kernels
(``torch.nn.functional.rms_norm`` has no fused CPU backward and is ~10x slower there).
"""

from __future__ import annotations

import torch
from torch import nn

from norms.functional import batch_norm_train, rms_norm
from norms.registry import check_layout, register_norm

__all__ = ["BatchNorm", "GroupNorm", "IdentityNorm", "LayerNorm", "RMSNorm"]


@register_norm("layernorm", layouts=("tokens",))
class LayerNorm(nn.Module):
    """LayerNorm over the last dim: gamma (x - mean) / sqrt(var + eps) + beta. Tokens."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layout(x, self.num_features, "tokens", "layernorm")
        return nn.functional.layer_norm(x, (self.num_features,), self.weight, self.bias, self.eps)


@register_norm("rmsnorm", layouts=("tokens",))
class RMSNorm(nn.Module):
    """RMSNorm over the last dim: gamma x / sqrt(mean(x^2) + eps). Tokens."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layout(x, self.num_features, "tokens", "rmsnorm")
        return rms_norm(x, self.weight, self.eps)


@register_norm("groupnorm", layouts=("maps",))
class GroupNorm(nn.GroupNorm):
    """GroupNorm over channel groups of channels-first maps (B, C, *)."""

    def __init__(
        self, num_features: int, num_groups: int = 32, eps: float = 1e-5, affine: bool = True
    ) -> None:
        groups = _largest_divisor_at_most(num_features, num_groups)
        super().__init__(groups, num_features, eps=eps, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layout(x, self.num_channels, "maps", "groupnorm")
        return super().forward(x)


@register_norm("batchnorm", layouts=("maps",), running_stats=True)
class BatchNorm(nn.Module):
    """BatchNorm with running statistics over (B, C, *) maps of any spatial rank."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features = num_features
        self.norm = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layout(x, self.num_features, "maps", "batchnorm")
        norm = self.norm
        if not self.training:
            return norm(x.flatten(2)).view_as(x)
        # torch's CPU BatchNorm forward is ~3x its GroupNorm: take the statistics from the latter.
        y, mean, var = batch_norm_train(x, norm.weight, norm.bias, norm.eps)
        norm.num_batches_tracked += 1
        rate = norm.momentum if norm.momentum is not None else 1.0 / int(norm.num_batches_tracked)
        _track_batch_stats(norm.running_mean, norm.running_var, mean, var, x, rate)
        return y


@register_norm("identity", layouts=("tokens", "maps"))
class IdentityNorm(nn.Identity):
    """No normalization (the baseline, and the target of LayerNorm removal)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features


@torch.no_grad()
def _track_batch_stats(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    x: torch.Tensor,
    rate: float,
) -> None:
    """BatchNorm's running-stat update from (B, C, *) ``x``'s batch mean and biased var."""
    n = x.numel() // running_mean.numel()
    running_mean.lerp_(mean.to(running_mean.dtype), rate)
    running_var.lerp_((var * (n / max(n - 1, 1))).to(running_var.dtype), rate)


def _largest_divisor_at_most(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is <= ``limit`` (so any channel count works)."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)
