"""CRMSNorm: RMSNorm of the compressed zero-mean vector.

Reference:
    Jiang, Gu, Zhu, Pan. Pre-RMSNorm and Pre-CRMSNorm Transformers: Equivalent and Efficient
    Pre-LN Transformers. NeurIPS 2023, arXiv:2305.14858.

Convention: a zero-mean vector z in R^d carries one redundant coordinate, z_d = -sum_{i<d} z_i.
A Pre-CRMSNorm transformer keeps only the first ``d - 1`` coordinates x = z[:d-1], so
``num_features`` is the COMPRESSED width ``d - 1`` and

    CRMSNorm(x) = gamma * x / sqrt((sum_i x_i^2 + (sum_i x_i)^2) / d + eps),   d = num_features + 1,

which equals the first ``d - 1`` outputs of RMSNorm applied to ``[x, -sum x]`` (same eps).
"""

from __future__ import annotations

import torch
from torch import nn

from norms.functional import crms_norm
from norms.registry import check_layout, register_norm

__all__ = ["CRMSNorm"]


@register_norm("crmsnorm", layouts=("tokens",))
class CRMSNorm(nn.Module):
    """CRMSNorm over the last dim; num_features is the compressed width d - 1. Tokens.

    Arguments:
        num_features: compressed width C = d - 1 (the full zero-mean width is C + 1).
        eps: added to the mean square, as in RMSNorm over the full width d.
        affine: learn a per-channel gain gamma (no bias).

    Example:
        >>> import torch
        >>> x = torch.randn(4, 7, dtype=torch.float64)
        >>> full = torch.cat([x, -x.sum(-1, keepdim=True)], -1)
        >>> rms = full / full.square().mean(-1, keepdim=True).add(1e-5).sqrt()
        >>> bool(torch.allclose(CRMSNorm(7).double()(x), rms[:, :7]))
        True
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layout(x, self.num_features, "tokens", "crmsnorm")
        return crms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        full = self.num_features + 1
        return f"{self.num_features} (compressed; full width {full}), eps={self.eps}"
