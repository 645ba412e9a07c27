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

No running statistics: train and eval compute the same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from norms.registry import check_layout, register_norm

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


def region_normalize(x: torch.Tensor, mask: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    """Per-channel (scale, shift) of both regions: ((a0, b0), (a1, b1)) as (C,) tensors.

    a_r = 1/sqrt(var_r + eps), b_r = -mu_r a_r, statistics over region r's pixels in the batch
    (an empty region gets mu = 0, var = 0).
    """
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    m1 = mask.reshape(b, mask.shape[1], -1).expand_as(flat)
    m0 = 1.0 - m1
    out = []
    for m in (m0, m1):
        count = m.sum(dim=(0, 2)).clamp_min(1.0)
        mu = (flat * m).sum(dim=(0, 2)) / count
        centred = (flat - mu.view(1, c, 1)) * m
        var = (centred * centred).sum(dim=(0, 2)) / count
        scale = torch.rsqrt(var + eps)
        out.append((scale, -mu * scale))
    return tuple(out)


def _blend(x: torch.Tensor, mask: torch.Tensor, params: tuple) -> torch.Tensor:
    """x * A + B with A, B chosen per pixel by the region mask (one fused pass per region)."""
    (a0, b0), (a1, b1) = params
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    m1 = mask.reshape(b, mask.shape[1], -1)
    y0 = torch.addcmul(b0.view(1, c, 1), flat, a0.view(1, c, 1))
    y1 = torch.addcmul(b1.view(1, c, 1), flat, a1.view(1, c, 1))
    return torch.lerp(y0, y1, m1.expand_as(flat)).view(x.shape)


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
        (a0, s0), (a1, s1) = region_normalize(x, mask, self.eps)
        params = (
            (a0 * self.weight[0], torch.addcmul(self.bias[0], s0, self.weight[0])),
            (a1 * self.weight[1], torch.addcmul(self.bias[1], s1, self.weight[1])),
        )
        return _blend(x, mask, params)


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

    def _conv(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        pad = conv.padding[0]
        if x.dim() == 4:
            return F.conv2d(x, conv.weight, conv.bias, padding=pad)
        if x.dim() == 3:
            return F.conv1d(x, conv.weight.sum(2), conv.bias, padding=pad)
        if x.dim() == 5:
            return F.conv3d(x, conv.weight.unsqueeze(2), conv.bias, padding=(0, pad, pad))
        raise ValueError(
            f"regionnorm_l supports 1 to 3 spatial dims (B, C, *); got shape {tuple(x.shape)}"
        )

    def importance(self, x: torch.Tensor) -> torch.Tensor:
        """Soft mask (B, 1, *) in (0, 1) from the channel mean and max of x."""
        features = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return torch.sigmoid(self._conv(self.mask_conv, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layout(x, self.num_features, "maps", "regionnorm_l")
        soft = self.importance(x)
        mask = (soft.detach() >= self.threshold).to(x.dtype)
        normed = _blend(x, mask, region_normalize(x, mask, self.eps))
        gamma, beta = self._conv(self.gamma_conv, soft), self._conv(self.beta_conv, soft)
        return torch.addcmul(beta, normed, 1.0 + gamma)
