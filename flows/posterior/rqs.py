r"""The monotonic rational-quadratic spline (Durkan et al. 2019): the coordinatewise bijection of
every posterior flow, identity outside [-B, B] (linear tails, so no input ever gives NaN or an
infinite log-Jacobian).

References:
    C. Durkan, A. Bekasov, I. Murray, G. Papamakarios, "Neural Spline Flows", NeurIPS 2019,
    arXiv:1906.04032.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["rational_quadratic_spline", "spline_parameter_count"]

MIN_BIN = 1e-3
MIN_DERIVATIVE = 1e-3
# softplus(IDENTITY_OFFSET) + MIN_DERIVATIVE == 1: zero network outputs give the identity spline.
IDENTITY_OFFSET = math.log(math.expm1(1.0 - MIN_DERIVATIVE))


def spline_parameter_count(bins: int) -> int:
    """Network outputs per coordinate: K widths, K heights, K - 1 interior derivatives."""
    return 3 * bins - 1


def rational_quadratic_spline(
    x: torch.Tensor,
    params: torch.Tensor,
    bound: float = 5.0,
    inverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the monotonic RQ spline (or its inverse) elementwise; identity outside [-B, B].

    Arguments:
        x: (...) inputs (outputs of the forward map when ``inverse``).
        params: (..., 3K - 1) unconstrained widths, heights and interior derivatives.
        bound: half-width B of the spline interval.
        inverse: evaluate the inverse map.

    Returns:
        (y, log|dy/dx|) of shape (...); for the inverse, log|dx/dy| of the returned x.
    """
    bins = (params.shape[-1] + 1) // 3
    # Widths and heights together: one softmax, one cumsum, one pad for both knot vectors.
    sizes = MIN_BIN + (1 - MIN_BIN * bins) * F.softmax(
        params[..., : 2 * bins].unflatten(-1, (2, bins)), dim=-1
    )
    ends = _END_KNOT.get((bins, sizes.dtype, sizes.device))
    if ends is None:
        ends = torch.zeros(bins + 1, dtype=sizes.dtype, device=sizes.device)
        ends[-1] = 1.0
        _END_KNOT[(bins, sizes.dtype, sizes.device)] = ends
    knots = (F.pad(torch.cumsum(sizes[..., :-1], dim=-1), (1, 1)) + ends) * (2 * bound) - bound
    inner = MIN_DERIVATIVE + F.softplus(params[..., 2 * bins :] + IDENTITY_OFFSET)
    table = torch.cat([knots, F.pad(inner, (1, 1), value=1.0).unsqueeze(-2)], dim=-2)

    inside = (x > -bound) & (x < bound)
    xc = x.clamp(-bound, bound)
    search = knots[..., 1 if inverse else 0, 1:-1]
    # Bin index = number of interior knots at or below the input (K is small: a compare is
    # faster than searchsorted and cannot step outside 0..K-1).
    idx = (xc.unsqueeze(-1) >= search).sum(-1, keepdim=True)
    # One gather for the six per-bin quantities: its backward is one scatter, not six.
    index = torch.cat([idx, idx + 1], dim=-1).unsqueeze(-2).expand(*idx.shape[:-1], 3, 2)
    # unbind (not indexing): its backward stacks instead of filling zeros per slice.
    (x_k, x_k1), (y_k, y_k1), (d_k, d_k1) = (
        pair.unbind(-1) for pair in table.gather(-1, index).unbind(-2)
    )
    w_k = (x_k1 - x_k).clamp_min(1e-12)
    h_k = (y_k1 - y_k).clamp_min(1e-12)
    s_k = h_k / w_k
    curvature = d_k1 + d_k - 2 * s_k

    if inverse:
        dy = xc - y_k
        a = h_k * (s_k - d_k) + dy * curvature
        b = h_k * d_k - dy * curvature
        c = -s_k * dy
        disc = (b * b - 4 * a * c).clamp_min(0)
        xi = ((2 * c) / (-b - disc.sqrt()).clamp_max(-1e-30)).clamp(0, 1)
    else:
        xi = ((xc - x_k) / w_k).clamp(0, 1)
    xi_1m = xi * (1 - xi)
    denom = s_k + curvature * xi_1m
    log_det = (
        2 * torch.log(s_k)
        + torch.log(d_k1 * xi * xi + 2 * s_k * xi_1m + d_k * (1 - xi) ** 2)
        - 2 * torch.log(denom)
    )
    if inverse:
        out, log_det = x_k + xi * w_k, -log_det
    else:
        out = y_k + h_k * (s_k * xi * xi + d_k * xi_1m) / denom
    return torch.where(inside, out, x), torch.where(inside, log_det, 0.0)


_END_KNOT: dict[tuple, torch.Tensor] = {}
