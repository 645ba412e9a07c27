"""Region Normalization: normalise each spatial region with its own statistics.

Reference:
    Yu, Guo, Jin, Wu, Chen, Li, Zhang, Liu. Region Normalization for Image Inpainting.
    AAAI 2020, arXiv:1911.10375.

For (B, C, *) maps and a binary region mask m (1 = region 1, e.g. the hole / foreground;
0 = region 0), per channel c and region r the mean and biased variance are taken over every
pixel of that region in the whole batch, and

    y = sum_r [m == r] * (gamma_{r,c} (x - mu_{r,c}) / sqrt(var_{r,c} + eps) + beta_{r,c}).

- RN-B (``regionnorm_b``): the mask is given, ``forward(x, mask=None)``; mask has shape
  (B, 1, *) or (B, *) (or (B, C, *) for per-channel regions) and is resized with nearest
  neighbours when its spatial size differs from x's. No mask = one region (batch statistics).
- RN-L (``regionnorm_l``): the mask is learned: the channel mean and channel max of x go through
  a k x k conv and a sigmoid (the importance map); pixels with importance >= threshold (0.8)
  form region 1. The regions are normalised without affine, then a pixel-wise affine
  y * (1 + conv_gamma(map)) + conv_beta(map) follows, through which the mask conv learns.
  The convs are 2-D; on (B, C, L) inputs the 2-D kernel is applied to the signal seen as an
  image constant along a second axis (kernel summed over that axis), on (B, C, T, H, W) inputs
  frame by frame.

No running statistics: train and eval compute the same function. The statistics are sums
(variance = E[x^2] - mu^2), so float32 loses precision when |mean| >> std; use float64 there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from norms.fusion import Kernel
from norms.reductions import channel_sums
from norms.registry import check_layout, in_dtype_of, register_norm

__all__ = ["RegionNormB", "RegionNormL", "region_normalize"]


def _prepare_mask(mask: torch.Tensor, x: torch.Tensor, layer: str) -> torch.Tensor:
    if mask.dim() == x.dim() - 1:
        mask = mask.unsqueeze(1)
    if (
        mask.dim() != x.dim()
        or mask.shape[0] != x.shape[0]
        or mask.shape[1]
        not in (
            1,
            x.shape[1],
        )
    ):
        raise ValueError(
            f"{layer}: mask must be (B, 1, *), (B, *) or (B, C, *) for x of shape "
            f"{tuple(x.shape)}; got {tuple(mask.shape)}"
        )
    mask = mask.to(x.dtype)
    if mask.shape[2:] != x.shape[2:]:
        mask = F.interpolate(mask, size=x.shape[2:], mode="nearest")
    return mask


def _region_sums(t: torch.Tensor, tm: torch.Tensor, flat: torch.Tensor) -> tuple:
    """Per-channel sums of t and t * x over all pixels and over region 1 (tm = t * mask)."""
    t_x, total = channel_sums(t, flat)
    tm_x, total_m = channel_sums(tm, flat)
    return total, t_x, total_m, tm_x


def _pixel_affine_grads(
    dy: torch.Tensor,
    dy_x: torch.Tensor,
    masked: torch.Tensor,
    mask: torch.Tensor,
    a: torch.Tensor,
    shift: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of RN-L's pixel scale and shift, (B, 1, L) each.

    The scale multiplies z = a_r x + shift_r, so its gradient is the channel sum of dy * z: a
    contraction of dy_x = dy * x and of dy with the per-region coefficient rows (batched mat-vec
    products, one read of each full-size tensor).
    """
    ones = torch.ones_like(a[0])
    delta_a, delta_shift = a[1] - a[0], shift[1] - shift[0]
    if mask.shape[1] == 1:
        ax = torch.matmul(torch.stack([a[0], delta_a]), dy_x)
        sd = torch.matmul(torch.stack([shift[0], delta_shift, ones]), dy)
        grad_scale = (ax[:, :1] + sd[:, :1]).addcmul_(ax[:, 1:] + sd[:, 1:2], mask)
        return grad_scale, sd[:, 2:]
    # Per-channel regions: the mask enters the contraction ((C,) @ (B, C, L) -> (B, L)).
    grad_scale = (
        torch.matmul(a[0], dy_x)
        + torch.matmul(delta_a, dy * masked)
        + torch.matmul(shift[0], dy)
        + torch.matmul(delta_shift, dy * mask)
    )
    return grad_scale.unsqueeze(1), torch.matmul(ones, dy).unsqueeze(1)


@Kernel
def _region_forward(flat, mask, weight, bias, pix_scale, pix_shift, eps: float):
    """Both regions normalised (and RN-L's pixel affine): the output and what backward needs."""
    b, c, length = flat.shape
    masked = flat * mask
    total, total_sq, sum1, sq1 = _region_sums(flat, masked, flat)
    count1 = mask.sum((0, 2)).expand(c)
    counts = torch.stack([b * length - count1, count1]).clamp_min(1.0)
    sums = torch.stack([total - sum1, sum1])
    squares = torch.stack([total_sq - sq1, sq1])
    mu = sums / counts
    s = torch.rsqrt((squares / counts - mu * mu).clamp_min(0.0) + eps)
    a = weight * s
    shift = bias - mu * a
    # y = a0 x + shift0 + m ((a1 - a0) x + shift1 - shift0), built in place on one buffer
    # (fresh full-size buffers are what costs most on CPU).
    y = torch.addcmul(shift[0].view(1, c, 1), flat, a[0].view(1, c, 1))
    y.addcmul_(masked, (a[1] - a[0]).view(1, c, 1))
    y.addcmul_(mask, (shift[1] - shift[0]).view(1, c, 1))
    if pix_scale is not None:
        y = torch.addcmul(pix_shift, y, pix_scale, out=y)
    return y, masked, mu, s, a, shift, counts


@Kernel
def _region_backward(dy, flat, mask, pix_scale, masked, mu, s, a, shift, counts):
    """Gradients of the region normalization for x, weight, bias and the pixel affine."""
    c = flat.shape[1]
    grad_pix_scale = grad_pix_shift = None
    if pix_scale is not None:
        dy_x = dy * flat
        grad_pix_scale, grad_pix_shift = _pixel_affine_grads(dy, dy_x, masked, mask, a, shift)
        dy = torch.mul(dy, pix_scale, out=dy_x)  # dy_x is spent: reuse its buffer
    # One fresh full-size buffer (a CPU spends more on the page faults of a new buffer than on
    # its arithmetic): dy * mask for the region-1 sums, then the gradient built on top of it.
    grad_x = dy * mask
    total, total_x, sum1, sum1_x = _region_sums(dy, grad_x, flat)
    sdy = torch.stack([total - sum1, sum1])
    # Per region: sum of dy * xhat with xhat = (x - mu) s.
    sdxhat = s * (torch.stack([total_x - sum1_x, sum1_x]) - mu * sdy)
    k = sdxhat / counts
    # BatchNorm's gradient per region, a (dy - mean(dy) - xhat mean(dy xhat)) = a dy + p x + q.
    p = -a * s * k
    q = a * (mu * s * k - sdy / counts)
    grad_x.mul_((a[1] - a[0]).view(1, c, 1)).addcmul_(dy, a[0].view(1, c, 1))
    grad_x.addcmul_(flat, p[0].view(1, c, 1)).addcmul_(masked, (p[1] - p[0]).view(1, c, 1))
    grad_x.addcmul_(mask, (q[1] - q[0]).view(1, c, 1)).add_(q[0].view(1, c, 1))
    return grad_x, sdxhat, sdy, grad_pix_scale, grad_pix_shift


class _RegionNormFunction(torch.autograd.Function):
    """y = a_r x + shift_r on the pixels of region r, a_r = w_r s_r, shift_r = b_r - mu_r a_r;
    optionally followed by a pixel-wise affine y * pix_scale + pix_shift ((B, 1, L) each, RN-L).

    Statistics and gradients are per-channel sums over all pixels minus those over region 1,
    so the full-size work is a handful of fused passes (autograd of the masked formula is ~10x
    slower on CPU).
    """

    @staticmethod
    def forward(ctx, flat, mask, weight, bias, pix_scale, pix_shift, eps):
        y, *saved = _region_forward(flat, mask, weight, bias, pix_scale, pix_shift, eps)
        ctx.save_for_backward(flat, mask, pix_scale, *saved)
        return y

    @staticmethod
    def backward(ctx, dy):
        grad_x, grad_w, grad_b, grad_scale, grad_shift = _region_backward(
            dy.contiguous(), *ctx.saved_tensors
        )
        return grad_x, None, grad_w, grad_b, grad_scale, grad_shift, None


class _ChannelMeanMax(torch.autograd.Function):
    """(B, 2, L): the channel mean and the channel max of (B, C, L) maps (RN-L's features).

    The mean is a batched mat-vec product and the max an ``amax``: ``x.max(1)`` with indices
    and ``x.mean(1)`` take several times as long on a CPU. Ties at the max share its gradient
    equally, as in ``amax``'s own backward.
    """

    @staticmethod
    def forward(ctx, flat):
        c = flat.shape[1]
        mean = torch.matmul(flat.new_full((1, c), 1.0 / c), flat)
        peak = flat.amax(1, keepdim=True)
        ctx.save_for_backward(flat, peak)
        return torch.cat([mean, peak], 1)

    @staticmethod
    def backward(ctx, grad):
        flat, peak = ctx.saved_tensors
        c = flat.shape[1]
        # 1 where a channel holds the max, as x's dtype straight away (bool masks are slow to
        # count and to multiply with), then its channel count by a mat-vec product.
        at_peak = torch.eq(flat, peak, out=torch.empty_like(flat))
        ties = torch.matmul(flat.new_ones(1, c), at_peak)
        return torch.addcmul(grad[:, :1] / c, at_peak, grad[:, 1:] / ties, out=at_peak)


def region_normalize(
    x: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    pixel_scale: torch.Tensor | None = None,
    pixel_shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """Normalise both regions of x (B, C, *) with their batch-wide statistics, then affine.

    ``mask`` is (B, 1, *) or (B, C, *) with values 0 / 1 and x's spatial size; ``weight`` and
    ``bias`` are (2, C), row r for region r. An empty region gets mean 0 and variance 0.
    ``pixel_scale`` / ``pixel_shift`` (B, 1, *), when given, multiply / shift the result per
    pixel (RN-L's self-aware affine).
    """
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1).contiguous()
    m = mask.reshape(b, mask.shape[1], -1).contiguous()
    if pixel_scale is not None:
        pixel_scale = pixel_scale.reshape(b, 1, -1).contiguous()
        pixel_shift = pixel_shift.reshape(b, 1, -1).contiguous()
    y = _RegionNormFunction.apply(flat, m, weight, bias, pixel_scale, pixel_shift, eps)
    return y.view(x.shape)


@register_norm("regionnorm_b", layouts=("maps",))
class RegionNormB(nn.Module):
    """RN-B: region normalization with a given binary mask and per-region affine. Maps.

    ``forward(x, mask=None)``; see the module docstring for the mask shapes.

    Arguments:
        num_features: channels C.
        eps: added to each region's variance.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        # Row 0: region 0 (mask == 0), row 1: region 1 (mask == 1).
        self.weight = nn.Parameter(torch.ones(2, num_features))
        self.bias = nn.Parameter(torch.zeros(2, num_features))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_layout(x, self.num_features, "maps", "regionnorm_b")
        if mask is None:
            return F.batch_norm(x, None, None, self.weight[1], self.bias[1], True, 0.0, self.eps)
        mask = _prepare_mask(mask, x, "regionnorm_b")
        return region_normalize(x, mask, *in_dtype_of(x, self.weight, self.bias), self.eps)


@register_norm("regionnorm_l", layouts=("maps",))
class RegionNormL(nn.Module):
    """RN-L: region normalization with a learned, thresholded soft mask. Maps.

    Arguments:
        num_features: channels C.
        threshold: importance at or above which a pixel belongs to region 1.
        kernel_size: size of the (odd) square convs of the importance map and pixel affine.
        eps: added to each region's variance.
    """

    def __init__(
        self, num_features: int, threshold: float = 0.8, kernel_size: int = 7, eps: float = 1e-5
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"regionnorm_l: kernel_size must be odd and >= 1; got {kernel_size}")
        self.num_features, self.threshold, self.eps = num_features, threshold, eps
        pad = kernel_size // 2
        self.mask_conv = nn.Conv2d(2, 1, kernel_size, padding=pad, bias=False)
        self.gamma_conv = nn.Conv2d(1, 1, kernel_size, padding=pad)
        self.beta_conv = nn.Conv2d(1, 1, kernel_size, padding=pad)
        # The region step has no affine of its own (the pixel-wise one follows it).
        self.register_buffer("_unit_weight", torch.ones(2, num_features), persistent=False)
        self.register_buffer("_zero_bias", torch.zeros(2, num_features), persistent=False)

    def _conv(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        return self._conv_with(conv.weight, conv.bias, x)

    def _conv_with(
        self, weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor
    ) -> torch.Tensor:
        pad = weight.shape[-1] // 2
        if x.dim() == 4:
            return F.conv2d(x, weight, bias, padding=pad)
        if x.dim() == 3:
            return F.conv1d(x, weight.sum(2), bias, padding=pad)
        if x.dim() == 5:
            return F.conv3d(x, weight.unsqueeze(2), bias, padding=(0, pad, pad))
        raise ValueError(
            f"regionnorm_l supports 1 to 3 spatial dims (B, C, *); got shape {tuple(x.shape)}"
        )

    def importance(self, x: torch.Tensor) -> torch.Tensor:
        """Soft mask (B, 1, *) in (0, 1) from the channel mean and max of x."""
        b, c = x.shape[:2]
        features = _ChannelMeanMax.apply(x.reshape(b, c, -1).contiguous())
        return torch.sigmoid(self._conv(self.mask_conv, features.view(b, 2, *x.shape[2:])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layout(x, self.num_features, "maps", "regionnorm_l")
        soft = self.importance(x)
        mask = (soft.detach() >= self.threshold).to(x.dtype)
        # gamma and beta convs as one conv with two output channels (one backward call).
        both = self._conv_with(
            torch.cat([self.gamma_conv.weight, self.beta_conv.weight]),
            torch.cat([self.gamma_conv.bias, self.beta_conv.bias]),
            soft,
        )
        gamma, beta = both[:, :1], both[:, 1:]
        weight, bias = in_dtype_of(x, self._unit_weight, self._zero_bias)
        return region_normalize(x, mask, weight, bias, self.eps, 1.0 + gamma, beta)
