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

All statistics are biased variances in the input dtype (timm casts them to float32), computed
from sums (E[x^2] - mean^2, fast on CPU; float32 loses precision when |mean| >> std). Both
layers have hand-written backward passes (checked against autograd by gradcheck in the tests)
whose per-row sums come from one fused pass each (:mod:`norms.reductions`).
"""

from __future__ import annotations

import torch
from torch import nn

from norms.basic import _largest_divisor_at_most
from norms.fusion import Kernel
from norms.reductions import row_sums
from norms.registry import check_layout, in_dtype_of, register_norm

__all__ = ["EvoNormB0", "EvoNormS0"]


def _channel_view(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return p.view(1, -1, *([1] * (x.dim() - 2)))


def _row_moments(flat: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and mean square of each of ``rows`` equal rows of ``flat``, as (B, rows / B, 1)."""
    sum_sq, sum_x = row_sums(flat, flat, rows)
    n = flat.numel() // rows
    shape = (flat.shape[0], rows // flat.shape[0], 1)
    return (sum_x / n).view(shape), (sum_sq / n).view(shape)


@Kernel
def _b0_forward(flat, v, weight, bias, running_var, batch_stats: bool, eps: float):
    """EvoNorm-B0 of (B, C, L) maps: the output, the variance used and what backward needs."""
    b, c, n = flat.shape
    mean_bc, sq_bc = _row_moments(flat, b * c)
    inst_std = torch.sqrt((sq_bc - mean_bc * mean_bc).clamp_min(0.0) + eps)
    if batch_stats:
        mean_c = mean_bc.mean(0, keepdim=True)
        var_c = (sq_bc.mean(0, keepdim=True) - mean_c * mean_c).clamp_min(0.0)
    else:
        mean_c, var_c = None, running_var.view(1, c, 1)
    left = torch.sqrt(var_c + eps)
    den = torch.addcmul(inst_std, flat, v.view(1, c, 1))
    den = torch.maximum(den, left, out=den)
    y = torch.div(flat, den)
    y = torch.addcmul(bias.view(1, c, 1), y, weight.view(1, c, 1), out=y)
    return y, var_c.view(c), den, left, mean_bc, inst_std, mean_c


@Kernel
def _b0_backward(dy, flat, v, weight, den, left, mean_bc, inst_std, mean_c, batch_stats: bool):
    """Gradients of EvoNorm-B0 for x, v, weight and bias.

    Two fresh full-size buffers (a CPU spends more on the page faults of a new buffer than
    on its arithmetic), everything else in place.
    """
    b, c, n = flat.shape
    w = weight.view(1, c, 1)
    u = torch.div(flat, den)
    grad_w, grad_b = (part.view(b, c).sum(0) for part in row_sums(dy, u, b * c))
    q = u.mul_(dy).div_(den)  # x dy / den^2 = -dL/dden / w
    q_sum = q.sum(2, keepdim=True) if batch_stats else None
    # Where the v x + S branch is the max; the comparison is written as x's dtype, because
    # multiplying by a bool tensor takes several times as long on a CPU.
    right = torch.gt(den, left, out=torch.empty_like(den))
    q_right = q.mul_(right)
    right_x, sum_right = row_sums(q_right, flat, b * c)
    grad_v = -(right_x.view(b, c) * weight).sum(0)
    # dS_bc/dx = (x - m_bc)/(n S_bc); dL_c/dx = (x - m_c)/(N L_c) (train only).
    sum_right_bc = sum_right.view(b, c, 1) * w
    coef = -sum_right_bc / (n * inst_std)
    const = -mean_bc * coef
    if batch_stats:
        sum_left_c = (sum_right_bc - q_sum * w).sum(0, keepdim=True)
        coef_c = sum_left_c / (b * n * left)
        coef = coef + coef_c
        const = const - mean_c * coef_c
    # dL/dx = w dy / den - w v q_right + coef x + const, in the buffer of the mask.
    grad_x = torch.div(dy, den, out=right).addcmul_(q_right, v.view(1, c, 1), value=-1).mul_(w)
    return grad_x.addcmul_(flat, coef).add_(const), grad_v, grad_w, grad_b


class _EvoB0Function(torch.autograd.Function):
    """y = w x / max(L_c, v x + S_bc) + b with a hand-written backward (see EvoNormB0)."""

    @staticmethod
    def forward(ctx, flat, v, weight, bias, batch_stats, running_var, eps):
        y, var_c, *saved = _b0_forward(flat, v, weight, bias, running_var, batch_stats, eps)
        ctx.save_for_backward(flat, v, weight, *saved)
        ctx.batch_stats = batch_stats
        return y, var_c

    @staticmethod
    def backward(ctx, dy, _grad_var):
        grads = _b0_backward(dy.contiguous(), *ctx.saved_tensors, ctx.batch_stats)
        return *grads, None, None, None


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
        v, weight, bias, running_var = in_dtype_of(
            x, self.v, self.weight, self.bias, self.running_var
        )
        if v is None:
            return torch.addcmul(_channel_view(bias, x), x, _channel_view(weight, x))
        flat = x.reshape(x.shape[0], self.num_features, -1).contiguous()
        y, var = _EvoB0Function.apply(flat, v, weight, bias, self.training, running_var, self.eps)
        if self.training:
            n = flat.numel() / self.num_features
            with torch.no_grad():
                unbiased = var * (n / max(n - 1.0, 1.0))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        return y.view(x.shape)


@Kernel
def _s0_forward(flat, v, weight, bias, groups: int, eps: float):
    """EvoNorm-S0 of (B, C, L) maps: the output and what backward needs."""
    b, c, n = flat.shape
    mean_g, sq_g = _row_moments(flat, b * groups)
    r_g = torch.rsqrt((sq_g - mean_g * mean_g).clamp_min(0.0) + eps)
    r = r_g.repeat_interleave(c // groups, 1)  # (B, C, 1)
    sig = torch.mul(flat, v.view(1, c, 1)).sigmoid_()
    y = torch.mul(flat, sig)
    y = torch.addcmul(bias.view(1, c, 1), y, r * weight.view(1, c, 1), out=y)
    return y, sig, r, mean_g, r_g


@Kernel
def _s0_backward(dy, flat, v, weight, sig, r, mean_g, r_g, groups: int):
    """Gradients of EvoNorm-S0 for x, v, weight and bias."""
    b, c, n = flat.shape
    h = torch.mul(flat, sig)
    dyh, sum_dy = row_sums(dy, h, b * c)
    dyh = dyh.view(b, c)
    grad_w = (dyh * r.view(b, c)).sum(0)
    grad_b = sum_dy.view(b, c).sum(0)
    # dL/dr_bg, and dr_bg/dx = -r^3 (x - m_bg) / (group size).
    grad_r = (dyh * weight).view(b, groups, -1).sum(2, keepdim=True)
    coef_g = -grad_r * r_g.pow(3) / (n * c // groups)
    coef = coef_g.repeat_interleave(c // groups, 1)
    const = (-mean_g * coef_g).repeat_interleave(c // groups, 1)
    # e = dy k with k = x sig (1 - sig) = dh/dv / x, in place on h.
    e = h.addcmul_(h, sig, value=-1).mul_(dy)
    scale = r * weight.view(1, c, 1)  # dL/dh = dy * scale
    grad_v = (row_sums(e, flat, b * c)[0].view(b, c, 1) * scale).sum((0, 2))
    # dh/dx = sig + v k, so dL/dx = scale (dy sig + v e) + coef x + const.
    grad_x = e.mul_(v.view(1, c, 1)).addcmul_(dy, sig).mul_(scale)
    grad_x = grad_x.addcmul_(flat, coef).add_(const)
    return grad_x, grad_v, grad_w, grad_b


class _EvoS0Function(torch.autograd.Function):
    """y = w x sigmoid(v x) r_bg + b, r_bg = 1/sqrt(groupvar + eps), hand-written backward."""

    @staticmethod
    def forward(ctx, flat, v, weight, bias, groups, eps):
        y, *saved = _s0_forward(flat, v, weight, bias, groups, eps)
        ctx.save_for_backward(flat, v, weight, *saved)
        ctx.groups = groups
        return y

    @staticmethod
    def backward(ctx, dy):
        grads = _s0_backward(dy.contiguous(), *ctx.saved_tensors, ctx.groups)
        return *grads, None, None


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
        v, weight, bias = in_dtype_of(x, self.v, self.weight, self.bias)
        if v is None:
            return torch.addcmul(_channel_view(bias, x), x, _channel_view(weight, x))
        flat = x.reshape(x.shape[0], self.num_features, -1).contiguous()
        y = _EvoS0Function.apply(flat, v, weight, bias, self.groups, self.eps)
        return y.view(x.shape)
