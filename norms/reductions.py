"""Fused sums sum(a * b) and sum(a) borrowed from torch's normalization backward kernels.

No paper: a helper of the layers in this package (PowerNorm, Unified Normalization, EvoNorm,
Region Normalization, RMSNorm). The affine gradients of LayerNorm and GroupNorm need, per
channel, sum(dy * xhat) and sum(dy); torch's fused backward kernels compute both in one
vectorised pass over dy and x. Called with mean 0 and rstd 1 (or a per-row weight as rstd) and
only the affine gradients requested, they are fused two-tensor reductions. Eager torch otherwise
spends a temporary and two or three memory passes on the same sums (``(a * b).sum(dim)``,
``torch.linalg.vecdot``), which on a CPU costs two to three times as much.

The kernels accumulate in the input dtype's accumulation type, as ``sum`` does.
"""

from __future__ import annotations

import torch

__all__ = ["channel_sums", "column_dots", "column_sums", "row_sums"]


def column_sums(
    a: torch.Tensor, b: torch.Tensor, row_weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_m w_m a_mc b_mc, sum_m a_mc) per column c of contiguous (M, C) ``a`` and ``b``.

    ``row_weight`` w is (M, 1) (default all ones); it weights the first sum only.
    """
    ab, sum_a = _layer_norm_sums(a, b, row_weight, with_sum_a=True)
    return ab, sum_a


def column_dots(
    a: torch.Tensor, b: torch.Tensor, row_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """sum_m w_m a_mc b_mc per column c: :func:`column_sums` without the second sum (cheaper)."""
    return _layer_norm_sums(a, b, row_weight, with_sum_a=False)[0]


def _layer_norm_sums(a, b, row_weight, with_sum_a: bool):
    rows, width = a.shape
    if row_weight is None:
        row_weight = a.new_ones(rows, 1)
    ones = a.new_ones(width)  # the kernel computes the affine gradients only when they exist
    _, ab, sum_a = torch.ops.aten.native_layer_norm_backward(
        a, b, [width], a.new_zeros(rows, 1), row_weight, ones, ones, [False, True, with_sum_a]
    )
    return ab, sum_a


def _group_norm_sums(a: torch.Tensor, b: torch.Tensor, batch: int, channels: int):
    length = a.numel() // (batch * channels)
    zero, one = a.new_zeros(batch, 1), a.new_ones(batch, 1)
    _, ab, sum_a = torch.ops.aten.native_group_norm_backward(
        a, b, zero, one, None, batch, channels, length, 1, [False, True, True]
    )
    return ab, sum_a


def channel_sums(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum a * b, sum a) per channel over batch and space of contiguous (B, C, *) tensors."""
    return _group_norm_sums(a, b, a.shape[0], a.shape[1])


def row_sums(a: torch.Tensor, b: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum a * b, sum a) over each of the ``rows`` equal contiguous rows of a and b, as (rows,)."""
    return _group_norm_sums(a, b, 1, rows)
