"""Unified Normalization: LayerNorm-quality training, BatchNorm-style foldable inference.

Reference:
    Yang, Xu, Zhao, Li, Tan, Tan. Unified Normalization for Accelerating and Stabilizing
    Transformers. ACM Multimedia 2022, arXiv:2208.01313.

Per channel, the uncentred statistic sigma_t^2 = mean(x^2) over the non-padding tokens of batch
t is kept in a window of the last W batches (default 4). After ``warmup_iters`` training steps
(and once the window is full) the layer divides by the GEOMETRIC mean of the window
(fluctuation smoothing); before that by the batch statistic. Adaptive outlier filtration
(optional): when the gap between the arithmetic and geometric means of the window exceeds W
times the variance of the recorded sqrt(sigma^2) values, the batch is treated as an outlier:
its slot is refilled with the running statistic and the batch normalises with its own
statistic. Gradient compensation in backward: with r = clamp(sqrt(var + eps) /
sqrt(running + eps), 1/5, 5) (1 during the first max(1000, warmup) steps and for outliers;
``compensation_start`` sets the 1000),
g = r * gamma * dL/dy, z = x / sqrt(var + eps):

    dL/dx = (g - ema_gz * z) / sqrt(var + eps),
    ema_gz <- momentum * ema_gz + (1 - momentum) * window-mean of mean(g z),
    dL/dgamma = sum(dL/dy * r * z),

At eval the layer is y = gamma / sqrt(running_var + eps) * x + beta (a per-channel affine map,
foldable into the next linear layer: :meth:`UnifiedNorm.fused_affine`).
"""

from __future__ import annotations

import torch
from torch import nn

from norms.powernorm import flatten_tokens, kept_mean, token_gradient_sums
from norms.registry import check_layout, in_dtype_of, register_norm

__all__ = ["UnifiedNorm"]


class _UnifiedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d, weight, bias, keep, choose, eps):
        var, ratio, state = choose(kept_mean(x2d, x2d, keep))  # the layer updates its state
        inv, ratio = in_dtype_of(x2d, torch.rsqrt(var + eps), ratio)
        ctx.save_for_backward(x2d, weight, inv, ratio, keep)
        ctx.state = state
        return torch.addcmul(bias, x2d, weight * inv)

    @staticmethod
    def backward(ctx, grad_y):
        x2d, weight, inv, ratio, keep = ctx.saved_tensors
        layer, step, use_window, skipped = ctx.state
        grad_y = grad_y.contiguous()
        sum_gx, grad_b, mean_gx = token_gradient_sums(grad_y, x2d, keep)
        grad_w = sum_gx * inv * ratio
        gscale = weight * ratio  # g = gscale * dL/dy
        mean_gz = gscale * inv * mean_gx
        with torch.no_grad():
            window = layer.buffer_gz.shape[0]
            slot = step % window
            layer.buffer_gz[slot] = layer.ema_gz if skipped else mean_gz
            target = layer.buffer_gz.mean(0) if use_window else mean_gz
            layer.ema_gz.mul_(layer.momentum).add_((1.0 - layer.momentum) * target)
            corr = target if skipped else layer.ema_gz.clone()
        grad_x = torch.mul(grad_y, gscale * inv)
        grad_x.addcmul_(x2d, corr * inv * inv, value=-1)
        return grad_x, grad_w, grad_b, None, None, None


@register_norm("unifiednorm", layouts=("tokens",), running_stats=True)
class UnifiedNorm(nn.Module):
    """Unified Normalization (Yang et al. 2022): windowed geometric-mean statistics. Tokens.

    ``forward(x, pad_mask=None)``: x is (..., C); pad_mask is x.shape[:-1], True at padding.

    Arguments:
        num_features: channels C.
        window_size: W, batches kept for the geometric mean (forward and backward windows).
        warmup_iters: training steps that use the batch statistic only.
        outlier_filtration: adaptive outlier filtration (the paper suggests it for vision).
        eps: added to the variance.
        momentum: EMA factor of running_var and ema_gz.
        compensation_start: gradient compensation (r != 1) starts after
            max(compensation_start, warmup_iters) steps (1000 in the paper's code).
        affine: learn gamma and beta.
    """

    def __init__(
        self,
        num_features: int,
        window_size: int = 4,
        warmup_iters: int = 4000,
        outlier_filtration: bool = False,
        eps: float = 1e-5,
        momentum: float = 0.9,
        compensation_start: int = 1000,
        affine: bool = True,
    ) -> None:
        super().__init__()
        if window_size < 1:
            raise ValueError(f"unifiednorm: window_size must be >= 1; got {window_size}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.warmup_iters, self.outlier_filtration = warmup_iters, outlier_filtration
        self.compensation_start = compensation_start
        self.weight = nn.Parameter(torch.ones(num_features), requires_grad=affine)
        self.bias = nn.Parameter(torch.zeros(num_features), requires_grad=affine)
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("ema_gz", torch.zeros(num_features))
        self.register_buffer("buffer_x2", torch.ones(window_size, num_features))
        self.register_buffer("buffer_gz", torch.zeros(window_size, num_features))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))
        self.register_buffer("num_outliers", torch.zeros((), dtype=torch.long))

    @property
    def window_size(self) -> int:
        return self.buffer_x2.shape[0]

    def fused_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode map as per-channel (scale, shift): y = scale * x + shift."""
        return self.weight * torch.rsqrt(self.running_var + self.eps), self.bias

    def _statistics(self, batch_x2: torch.Tensor, step: int) -> tuple[torch.Tensor, bool, bool]:
        """Variance to divide by; whether the window was used; whether the batch is an outlier."""
        window = self.window_size
        slot = step % window
        # Filtration starts once the window holds real statistics (automatic in the paper's
        # code, where warmup_iters >= W).
        started = step > window and step >= self.warmup_iters
        filtering = self.outlier_filtration and started and self.buffer_x2.numel() > 1
        # The spread of the recorded statistics before this batch (only needed when filtering).
        recorded = torch.sqrt(self.buffer_x2).var() if filtering else None
        self.buffer_x2[slot] = batch_x2
        skipped = False
        if filtering:
            arithmetic = self.buffer_x2.mean(0)
            geometric = self.buffer_x2.log().mean(0).exp()
            if bool(((arithmetic - geometric) > recorded * window).any()):
                self.buffer_x2[slot] = self.running_var
                self.num_outliers += 1
                skipped = True
        use_window = window > 1 and started and not skipped
        var = self.buffer_x2.log().mean(0).exp() if use_window else batch_x2
        return var, use_window, skipped

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        check_layout(x, self.num_features, "tokens", "unifiednorm")
        if not self.training:
            scale, shift = in_dtype_of(x, *self.fused_affine())
            return torch.addcmul(shift, x, scale)
        x2d, keep = flatten_tokens(x, pad_mask, "unifiednorm")
        weight, bias = in_dtype_of(x, self.weight, self.bias)
        y = _UnifiedFunction.apply(x2d, weight, bias, keep, self._step, self.eps)
        return y.view(x.shape)

    @torch.no_grad()
    def _step(self, batch_x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """Variance to divide by, compensation ratio r, and the state backward needs."""
        self.num_batches_tracked += 1
        step = int(self.num_batches_tracked)
        var, use_window, skipped = self._statistics(batch_x2, step)
        if step <= max(self.compensation_start, self.warmup_iters) or skipped:
            ratio = torch.ones_like(var)
        else:
            ratio = torch.sqrt((var + self.eps) / (self.running_var + self.eps)).clamp(0.2, 5.0)
        self.running_var.lerp_(var.to(self.running_var.dtype), 1.0 - self.momentum)
        return var, ratio, (self, step, use_window, skipped)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, window={self.window_size}, warmup_iters={self.warmup_iters}, "
            f"outlier_filtration={self.outlier_filtration}, eps={self.eps}, "
            f"momentum={self.momentum}"
        )
