"""PowerNorm: batch quadratic-mean normalization with running statistics for transformers.

Reference:
    Shen, Yao, Gholami, Mahoney, Keutzer. PowerNorm: Rethinking Batch Normalization in
    Transformers. ICML 2020, arXiv:2003.07845.

Per channel c, over the non-padding tokens of the batch, psi_B^2 = mean(x_c^2) (no mean
subtraction). During the first ``warmup_iters`` training steps the layer divides by the batch
psi_B and ``running_phi`` is the cumulative average of psi_B^2; afterwards it divides by the
RUNNING psi^2 (an EMA with ``alpha_fwd``) and keeps updating it. The backward is the paper's
approximate one (Algorithm 1): with z = x / psi, g = gamma * dL/dy,

    dL/dx = (g - (1 - alpha_bkw) * ema_gz * z) / psi,
    ema_gz <- ema_gz + mean((g - (1 - alpha_bkw) * ema_gz * z) * z)   (over non-padding tokens),

i.e. the EMA-corrected gradient term replaces the exact batch-statistics gradient. In eval mode
the layer is the per-channel affine map y = gamma / sqrt(running_phi + eps) * x + beta, which
:meth:`PowerNorm.fused_affine` returns as ``(scale, shift)``.

The optional group scaling of the paper (each token divided by its RMS over each group of
channels) is off by default, because with it the eval map is no longer affine.
"""

from __future__ import annotations

import torch
from torch import nn

from norms.functional import rms_norm
from norms.reductions import column_dots, column_sums
from norms.registry import check_layout, in_dtype_of, register_norm

__all__ = ["PowerNorm", "flatten_tokens", "kept_mean", "token_gradient_sums"]


def flatten_tokens(
    x: torch.Tensor, pad_mask: torch.Tensor | None, layer: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(..., C) tokens as (M, C) rows plus an (M, 1) float keep-mask (1 = real token) or None."""
    x2d = x.contiguous().view(-1, x.shape[-1])
    if pad_mask is None:
        return x2d, None
    if tuple(pad_mask.shape) != tuple(x.shape[:-1]):
        raise ValueError(
            f"{layer}: pad_mask must have shape {tuple(x.shape[:-1])} (True = padding); "
            f"got {tuple(pad_mask.shape)}"
        )
    keep = (~pad_mask.to(torch.bool)).reshape(-1, 1).to(x.dtype)
    if not bool(keep.any()):
        raise ValueError(f"{layer}: pad_mask marks every token as padding; need >= 1 real token")
    return x2d, keep


def kept_mean(a: torch.Tensor, b: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Per-channel mean of a * b over the kept rows of (M, C) ``a``, ``b`` (one fused pass)."""
    total = column_dots(a, b, keep)
    return total / (a.shape[0] if keep is None else keep.sum())


def token_gradient_sums(
    grad_y: torch.Tensor, x2d: torch.Tensor, keep: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per channel: sum(dy * x) and sum(dy) over all rows, and mean(dy * x) over kept rows."""
    sum_gx, sum_g = column_sums(grad_y, x2d)
    mean_gx = sum_gx / x2d.shape[0] if keep is None else kept_mean(grad_y, x2d, keep)
    return sum_gx, sum_g, mean_gx


class _PowerFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d, weight, bias, keep, choose, ema_gz, alpha_bkw, eps):
        batch_psi2 = kept_mean(x2d, x2d, keep)
        psi2 = choose(batch_psi2)  # the layer picks batch / running psi^2 and updates its state
        inv = torch.rsqrt(psi2 + eps).to(x2d.dtype)
        ctx.save_for_backward(x2d, weight, inv, batch_psi2, keep)
        # The correction state is read and updated in backward, not saved: it changes between
        # the forward and the backward when the layer runs twice in one graph.
        ctx.ema_gz, ctx.alpha_bkw = ema_gz, alpha_bkw
        return torch.addcmul(bias, x2d, weight * inv)

    @staticmethod
    def backward(ctx, grad_y):
        x2d, weight, inv, batch_psi2, keep = ctx.saved_tensors
        ema_gz = ctx.ema_gz
        grad_y = grad_y.contiguous()
        corr = (1.0 - ctx.alpha_bkw) * ema_gz
        sum_gx, grad_b, mean_gx = token_gradient_sums(grad_y, x2d, keep)
        # mean(g z) = weight * inv * mean(dy x); mean(z^2) = inv^2 * psi_B^2 (non-pad tokens).
        with torch.no_grad():
            ema_gz.add_(weight * inv * mean_gx - corr * inv * inv * batch_psi2)
        grad_x = torch.mul(grad_y, weight * inv).addcmul_(x2d, corr * inv * inv, value=-1)
        return grad_x, sum_gx * inv, grad_b, None, None, None, None, None


@register_norm("powernorm", layouts=("tokens",), running_stats=True)
class PowerNorm(nn.Module):
    """PowerNorm (Shen et al. 2020): running quadratic mean, approximate backward. Tokens.

    ``forward(x, pad_mask=None)``: x is (..., C); pad_mask is x.shape[:-1] with True at padding
    tokens, which are normalised but excluded from every statistic.

    Arguments:
        num_features: channels C.
        eps: added to psi^2.
        alpha_fwd: EMA factor of running psi^2 (0.9 in the paper).
        alpha_bkw: EMA factor of the backward correction (0.9 in the paper).
        warmup_iters: training steps that divide by the batch psi before switching to the
            running one.
        group_scaling: 0 (off) or the number of channel groups whose RMS divides each token
            first (the paper's GroupScaling; makes the eval map non-affine).
        affine: learn gamma and beta.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        alpha_fwd: float = 0.9,
        alpha_bkw: float = 0.9,
        warmup_iters: int = 4000,
        group_scaling: int = 0,
        affine: bool = True,
    ) -> None:
        super().__init__()
        if group_scaling < 0 or (group_scaling and num_features % group_scaling):
            raise ValueError(
                f"powernorm: group_scaling must be 0 or divide num_features={num_features}; "
                f"got {group_scaling}"
            )
        self.num_features, self.eps = num_features, eps
        self.alpha_fwd, self.alpha_bkw = alpha_fwd, alpha_bkw
        self.warmup_iters, self.group_scaling = warmup_iters, group_scaling
        self.weight = nn.Parameter(torch.ones(num_features), requires_grad=affine)
        self.bias = nn.Parameter(torch.zeros(num_features), requires_grad=affine)
        self.register_buffer("running_phi", torch.ones(num_features))
        self.register_buffer("ema_gz", torch.zeros(num_features))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def fused_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode map as per-channel (scale, shift): y = scale * x + shift."""
        if self.group_scaling:
            raise ValueError("powernorm: with group_scaling > 0 the eval map is not affine")
        return self._eval_scale(), self.bias

    def _eval_scale(self) -> torch.Tensor:
        """Per-channel gain of the eval map (after group scaling, when that is on)."""
        return self.weight * torch.rsqrt(self.running_phi + self.eps)

    def _group_scale(self, x: torch.Tensor) -> torch.Tensor:
        groups = self.group_scaling
        grouped = x.reshape(*x.shape[:-1], groups, self.num_features // groups)
        return rms_norm(grouped, None, self.eps).reshape(x.shape)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        check_layout(x, self.num_features, "tokens", "powernorm")
        if self.group_scaling:
            x = self._group_scale(x)
        if not self.training:
            bias, scale = in_dtype_of(x, self.bias, self._eval_scale())
            return torch.addcmul(bias, x, scale)
        x2d, keep = flatten_tokens(x, pad_mask, "powernorm")
        weight, bias = in_dtype_of(x, self.weight, self.bias)
        y = _PowerFunction.apply(
            x2d, weight, bias, keep, self._divisor, self.ema_gz, self.alpha_bkw, self.eps
        )
        return y.view(x.shape)

    @torch.no_grad()
    def _divisor(self, batch_psi2: torch.Tensor) -> torch.Tensor:
        """psi^2 to divide by this step (batch during warm-up, running after); updates state."""
        self.num_batches_tracked += 1
        step = int(self.num_batches_tracked)
        if step <= self.warmup_iters:
            self.running_phi.mul_((step - 1) / step).add_(batch_psi2 / step)
            return batch_psi2
        psi2 = self.running_phi.clone()
        self.running_phi.lerp_(batch_psi2.to(psi2.dtype), 1.0 - self.alpha_fwd)
        return psi2

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, alpha_fwd={self.alpha_fwd}, "
            f"alpha_bkw={self.alpha_bkw}, warmup_iters={self.warmup_iters}, "
            f"group_scaling={self.group_scaling}"
        )
