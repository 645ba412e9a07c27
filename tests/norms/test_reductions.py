"""The fused sums of norms.reductions against plain sums, in float64 and float32."""

from __future__ import annotations

import pytest
import torch

from norms.reductions import channel_sums, column_dots, column_sums, row_sums

TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-4}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(7, 13), (1, 5), (33, 1)])
def test_column_sums(dtype, shape):
    a, b = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype) + 0.5
    weight = torch.rand(shape[0], 1, dtype=dtype)
    tol = TOLERANCE[dtype]
    ab, sum_a = column_sums(a, b)
    torch.testing.assert_close(ab, (a * b).sum(0), rtol=tol, atol=tol)
    torch.testing.assert_close(sum_a, a.sum(0), rtol=tol, atol=tol)
    weighted, sum_a = column_sums(a, b, weight)
    torch.testing.assert_close(weighted, (weight * a * b).sum(0), rtol=tol, atol=tol)
    torch.testing.assert_close(sum_a, a.sum(0), rtol=tol, atol=tol)  # the weight is not in it
    torch.testing.assert_close(column_dots(a, b, weight), weighted, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 3, 4, 5), (1, 1, 9)])
def test_channel_and_row_sums(dtype, shape):
    a, b = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype) - 0.3
    tol = TOLERANCE[dtype]
    spatial = tuple(range(2, len(shape)))
    ab, sum_a = channel_sums(a, b)
    torch.testing.assert_close(ab, (a * b).sum((0, *spatial)), rtol=tol, atol=tol)
    torch.testing.assert_close(sum_a, a.sum((0, *spatial)), rtol=tol, atol=tol)
    rows = shape[0] * shape[1]
    ab, sum_a = row_sums(a, b, rows)
    torch.testing.assert_close(ab, (a * b).reshape(rows, -1).sum(1), rtol=tol, atol=tol)
    torch.testing.assert_close(sum_a, a.reshape(rows, -1).sum(1), rtol=tol, atol=tol)
