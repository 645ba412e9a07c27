"""Fast CPU/GPU kernels for RMSNorm, CRMSNorm and training-mode BatchNorm.

References:
    Zhang, Sennrich. Root Mean Square Layer Normalization. NeurIPS 2019, arXiv:1910.07467.
    Jiang, Gu, Zhu, Pan. Pre-RMSNorm and Pre-CRMSNorm Transformers: Equivalent and Efficient
    Pre-LN Transformers. NeurIPS 2023, arXiv:2305.14858.

torch (2.14) has no fused CPU RMSNorm: ``torch.nn.functional.rms_norm`` decomposes into about
ten elementwise passes there (~7x LayerNorm), and ``aten::_fused_rms_norm`` has CUDA kernels
only. On a CPU the forward here takes each row's square sum in one reduction pass and scales
in two; the backward is the fused LayerNorm backward evaluated with mean 0 and the RMS rstd,
which is the RMSNorm gradient up to one per-row constant added back in place. Everything runs
in the input dtype.
"""

from __future__ import annotations

import torch

from norms.fusion import Kernel, compiled_kernels_enabled
from norms.reductions import column_dots, row_sums
from norms.registry import in_dtype_of

__all__ = ["batch_norm_train", "crms_norm", "rms_norm"]


def _inverse_rms(sum_sq: torch.Tensor, denominator: int, eps: float) -> torch.Tensor:
    """1 / sqrt(sum_sq / denominator + eps) as an (M, 1) column."""
    return sum_sq.view(-1, 1).div(denominator).add_(eps).rsqrt_()


def _scale_rows(x2d: torch.Tensor, r: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """weight * x * r: one pass into a fresh buffer and one in place."""
    return torch.mul(x2d, r).mul_(weight)


def _layer_norm_input_grad(
    grad_y: torch.Tensor, x2d: torch.Tensor, weight: torch.Tensor, r: torch.Tensor, need_w: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fused LayerNorm backward evaluated at mean 0 and rstd r: (dx, dweight).

    With g = grad_y * weight and xhat = x r it returns r (g - mean(g) - xhat mean(g xhat)) and
    sum(grad_y * xhat) over rows; the callers add back what their norm does not centre.
    """
    grad_x, grad_w, _ = torch.ops.aten.native_layer_norm_backward(
        grad_y, x2d, [x2d.shape[-1]], torch.zeros_like(r), r, weight, None, [True, need_w, False]
    )
    return grad_x, grad_w


@Kernel
def _rms_forward(x2d: torch.Tensor, weight: torch.Tensor, eps: float):
    """RMSNorm of (M, C) rows: (output, per-row 1/rms)."""
    r = _inverse_rms(torch.linalg.vector_norm(x2d, dim=-1).square_(), x2d.shape[-1], eps)
    return _scale_rows(x2d, r, weight), r


@Kernel
def _rms_input_grad(grad_y, x2d, weight, r):
    """dL/dx of RMSNorm in closed form, r (g - xhat mean(g xhat)), g = dy w, xhat = x r (the
    compiled kernels' formulation; eagerly the LayerNorm route below is faster)."""
    g = grad_y * weight
    xhat = x2d * r
    return r * (g - xhat * (g * xhat).mean(-1, keepdim=True))


@Kernel
def _crms_forward(x2d: torch.Tensor, weight: torch.Tensor, eps: float):
    """CRMSNorm of (M, C) rows: (output, per-row 1/rms, per-row sum of x)."""
    sum_sq, sum_x = row_sums(x2d, x2d, x2d.shape[0])
    # The implicit full vector [x, -sum x] of width d = C + 1 has the square sum
    # sum x^2 + (sum x)^2; RMSNorm over it divides by d.
    r = _inverse_rms(torch.addcmul(sum_sq, sum_x, sum_x), x2d.shape[-1] + 1, eps)
    return _scale_rows(x2d, r, weight), r, sum_x.view(-1, 1)


@Kernel
def _crms_input_grad(grad_y, x2d, weight, r, sum_x):
    """dL/dx of CRMSNorm in closed form, r g - r^3/d (x + sum x) (g . x), g = dy w."""
    g = grad_y * weight
    g_dot_x = (g * x2d).sum(-1, keepdim=True)
    return r * g - (r * r * r / (x2d.shape[-1] + 1)) * g_dot_x * (x2d + sum_x)


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        y, r = _rms_forward(x2d, weight, eps)
        ctx.save_for_backward(x2d, weight, r)
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x2d, weight, r = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        need_w = ctx.needs_input_grad[1]
        if compiled_kernels_enabled():
            grad_w = column_dots(grad_y, x2d, r) if need_w else None
            return _rms_input_grad(grad_y, x2d, weight, r), grad_w, None
        grad_x, grad_w = _layer_norm_input_grad(grad_y, x2d, weight, r, need_w)
        # Add back r * mean(g), the derivative of the centring that RMSNorm does not do.
        row_sum_g = torch.mv(grad_y, weight).view(-1, 1)
        grad_x.add_(row_sum_g * r / x2d.shape[-1])
        return grad_x, grad_w, None


class _CRMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        y, r, sum_x = _crms_forward(x2d, weight, eps)
        ctx.save_for_backward(x2d, weight, r, sum_x, y)
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x2d, weight, r, sum_x, y = ctx.saved_tensors
        c = x2d.shape[-1]
        d = c + 1
        grad_y = grad_y.contiguous()
        need_w = ctx.needs_input_grad[1]
        if compiled_kernels_enabled():
            grad_w = column_dots(grad_y, x2d, r) if need_w else None
            return _crms_input_grad(grad_y, x2d, weight, r, sum_x), grad_w, None
        # Wanted: dx_j = r g_j - r^3/d (x_j + sum x) (g . x), with g = grad_y * weight.
        # The LayerNorm backward with mean 0 and rstd r gives r g - r^3 (g . x) x / c - r sum(g)/c;
        # two in-place row corrections turn one into the other. g . x = (grad_y . y) / r.
        grad_x, grad_w = _layer_norm_input_grad(grad_y, x2d, weight, r, need_w)
        dot = row_sums(grad_y, y, x2d.shape[0])[0].view(-1, 1) / r
        sum_g = torch.mv(grad_y, weight).view(-1, 1)
        r3_dot = r * r * r * dot
        grad_x.addcmul_(x2d, r3_dot, value=1.0 / c - 1.0 / d)
        grad_x.add_(r * sum_g / c - r3_dot * sum_x / d)
        return grad_x, grad_w, None


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(-1, x.shape[-1])


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """weight * x / sqrt(mean(x^2, -1) + eps) over the last dim, in x's dtype."""
    (weight,) = in_dtype_of(x, weight)
    if x.is_cuda:  # CUDA has a fused RMSNorm forward and backward; only CPU needs the detour
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)
    if weight is None:
        weight = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
    return _RMSNormFunction.apply(_as_rows(x), weight, eps).view(x.shape)


def crms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """weight * x / sqrt((sum x^2 + (sum x)^2) / (C + 1) + eps) over the last dim (C = width)."""
    (weight,) = in_dtype_of(x, weight)
    if weight is None:
        weight = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
    return _CRMSNormFunction.apply(_as_rows(x), weight, eps).view(x.shape)


class _TrainBatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm whose statistics come from the fused GroupNorm kernel.

    torch's CPU BatchNorm forward on (B, C, *) is ~3x slower than its GroupNorm; with one group
    per channel GroupNorm gives every (sample, channel) mean and variance, the law of total
    variance turns them into the batch statistics, and its normalised output is rescaled in
    place into the BatchNorm output. The backward is torch's fused BatchNorm backward.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        b, c = x.shape[:2]
        spatial = x.numel() // (b * c)
        xhat, mean_bc, rstd_bc = torch.ops.aten.native_group_norm(
            x, None, None, b, c, spatial, c, eps
        )
        mean_bc, var_bc = mean_bc.view(b, c), rstd_bc.view(b, c).pow(-2) - eps
        mean = mean_bc.mean(0)
        var = (var_bc + mean_bc * mean_bc).mean(0) - mean * mean
        invstd = torch.rsqrt(var.clamp_min(0.0) + eps)
        scale = weight * invstd
        # z = scale (x - mean) + bias with x = xhat / rstd_bc + mean_bc.
        shape = (b, c) + (1,) * (x.dim() - 2)
        z = xhat.mul_((scale / rstd_bc.view(b, c)).view(shape))
        z.add_((scale * (mean_bc - mean) + bias).view(shape))
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var)
        return z, mean, var

    @staticmethod
    def backward(ctx, dz, _dmean, _dvar):
        x, weight, mean, invstd = ctx.saved_tensors
        grad_x, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
            dz.contiguous(), x, weight, None, None, mean, invstd, True, ctx.eps,
            [True, ctx.needs_input_grad[1], ctx.needs_input_grad[2]],
        )  # fmt: skip
        return grad_x, grad_w, grad_b, None


def batch_norm_train(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-mode BatchNorm of (B, C, *) maps: (output, batch mean, biased batch variance)."""
    return _TrainBatchNorm.apply(x.contiguous(), *in_dtype_of(x, weight, bias), eps)
