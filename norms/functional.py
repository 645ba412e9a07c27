"""Fast CPU/GPU kernels for RMSNorm, CRMSNorm and training-mode BatchNorm.

References:
    Zhang, Sennrich. Root Mean Square Layer Normalization. NeurIPS 2019, arXiv:1910.07467.
    Jiang, Gu, Zhu, Pan. Pre-RMSNorm and Pre-CRMSNorm Transformers: Equivalent and Efficient
    Pre-LN Transformers. NeurIPS 2023, arXiv:2305.14858.

``torch.nn.functional.rms_norm`` has no fused CPU backward (it is ~10x slower than LayerNorm
on CPU). Both functions here reuse the fused LayerNorm kernel instead: the LayerNorm forward
returns each row's mean m and 1/sqrt(var + eps), from which the uncentred statistic follows
(mean(x^2) = var + m^2), and the LayerNorm backward evaluated with mean 0 and the RMS rstd is
the RMSNorm gradient up to one per-row constant. Everything runs in the input dtype.
"""

from __future__ import annotations

import torch

__all__ = ["batch_norm_train", "crms_norm", "rms_norm"]


def _layer_norm_stats(x2d: torch.Tensor, weight: torch.Tensor | None, eps: float):
    """Fused LayerNorm forward: (weight * (x - m) * rstd_ln, m, rstd_ln) with (M, 1) stats."""
    y, mean, rstd = torch.ops.aten.native_layer_norm(x2d, [x2d.shape[-1]], weight, None, eps)
    return y, mean.view(-1, 1), rstd.view(-1, 1)


def _uncentred_from_centred(
    y: torch.Tensor, mean: torch.Tensor, rstd_ln: torch.Tensor, r: torch.Tensor, w: torch.Tensor
) -> torch.Tensor:
    # w * x * r = (r / rstd_ln) * [w * (x - m) * rstd_ln] + (m * r) * w, in place on y.
    return y.mul_(r / rstd_ln).addcmul_(mean * r, w)


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        y, mean, rstd_ln = _layer_norm_stats(x2d, weight, eps)
        # mean(x^2) + eps = 1 / rstd_ln^2 + m^2 (the LayerNorm eps is already inside rstd_ln).
        r = torch.rsqrt(rstd_ln.pow(-2) + mean * mean)
        y = _uncentred_from_centred(y, mean, rstd_ln, r, weight)
        ctx.save_for_backward(x2d, weight, r)
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x2d, weight, r = ctx.saved_tensors
        zero = torch.zeros_like(r)
        grad_x, grad_w, _ = torch.ops.aten.native_layer_norm_backward(
            grad_y.contiguous(),
            x2d,
            [x2d.shape[-1]],
            zero,
            r,
            weight,
            None,
            [True, ctx.needs_input_grad[1], False],
        )
        # The LayerNorm backward subtracts r * mean(g) per row (g = grad_y * weight), the
        # derivative of the centring that RMSNorm does not do: add it back.
        row_sum_g = torch.mv(grad_y.view_as(x2d), weight).view(-1, 1)
        grad_x.add_(row_sum_g * r / x2d.shape[-1])
        return grad_x, grad_w, None


class _CRMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        c = x2d.shape[-1]
        d = c + 1
        y, mean, rstd_ln = _layer_norm_stats(x2d, weight, eps)
        # With v = 1/rstd_ln^2 = var + eps: sum x^2 = c (v - eps + m^2) and sum x = c m, so
        # (sum x^2 + (sum x)^2)/d + eps = (c (v + m^2) + (c m)^2)/d + eps/d.
        s1 = mean * c
        r = torch.rsqrt((c * (rstd_ln.pow(-2) + mean * mean) + s1 * s1 + eps) / d)
        y = _uncentred_from_centred(y, mean, rstd_ln, r, weight)
        ctx.save_for_backward(x2d, weight, r, s1, y)
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x2d, weight, r, s1, y = ctx.saved_tensors
        c = x2d.shape[-1]
        d = c + 1
        grad_y = grad_y.contiguous().view_as(x2d)
        # Wanted: dx_j = r g_j - r^3/d (x_j + sum x) (g . x), with g = grad_y * weight.
        # The LayerNorm backward with mean 0 and rstd r gives r g - r^3 (g . x) x / c - r sum(g)/c;
        # two in-place row corrections turn one into the other. g . x = (grad_y . y) / r.
        grad_x, grad_w, _ = torch.ops.aten.native_layer_norm_backward(
            grad_y, x2d, [c], torch.zeros_like(r), r, weight, None,
            [True, ctx.needs_input_grad[1], False],
        )  # fmt: skip
        dot = torch.linalg.vecdot(grad_y, y).view(-1, 1) / r
        sum_g = torch.mv(grad_y, weight).view(-1, 1)
        r3_dot = r * r * r * dot
        grad_x.addcmul_(x2d, r3_dot, value=1.0 / c - 1.0 / d)
        grad_x.add_(r * sum_g / c - r3_dot * s1 / d)
        return grad_x, grad_w, None


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(-1, x.shape[-1])


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """weight * x / sqrt(mean(x^2, -1) + eps) over the last dim, in x's dtype."""
    if x.is_cuda:  # CUDA has a fused RMSNorm forward and backward; only CPU needs the detour
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)
    if weight is None:
        weight = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
    return _RMSNormFunction.apply(_as_rows(x), weight, eps).view(x.shape)


def crms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """weight * x / sqrt((sum x^2 + (sum x)^2) / (C + 1) + eps) over the last dim (C = width)."""
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
    return _TrainBatchNorm.apply(x.contiguous(), weight, bias, eps)
