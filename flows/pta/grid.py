r"""Brute-force grid evidence for low-dimensional (1-3 parameter) models: the ground truth.

    Z = int L(theta) pi(theta) d theta  ~=  sum_cells L(theta_c) pi(theta_c) Delta V,

a midpoint rule on a regular grid over the prior box (uniform limits; Gaussian blocks
truncated at +- GAUSSIAN_BOX_SIGMAS sigma, where the prior mass left out is below 1e-8), summed
in log space. The error is estimated by Richardson-style comparison with the same rule on a
grid twice as coarse: |ln Z_n - ln Z_{n/2}| (the midpoint rule converges as n^-2, so this
bounds the error of the fine grid by about a third of itself; we report the whole difference).

References:
    A. Afzal et al. (NANOGrav), arXiv:2306.16219 (the models integrated here).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["GridEvidence", "grid_evidence"]


@dataclass(frozen=True)
class GridEvidence:
    """Result of :func:`grid_evidence`: ln Z, its error estimate, the grid size per axis."""

    ln_z: float
    ln_z_err: float
    points_per_axis: int


def _ln_z_on_grid(
    ln_posterior: Callable[[torch.Tensor], torch.Tensor],
    bounds: np.ndarray,
    n: int,
    batch: int,
    dtype: torch.dtype,
) -> float:
    ndim = bounds.shape[0]
    axes = []
    widths = []
    for low, high in bounds:
        step = (high - low) / n
        axes.append(torch.linspace(low + step / 2, high - step / 2, n, dtype=dtype))
        widths.append(step)
    mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, ndim)
    values = torch.cat([ln_posterior(mesh[i : i + batch]) for i in range(0, len(mesh), batch)])
    ln_cell = sum(math.log(w) for w in widths)
    return float(torch.logsumexp(values.to(torch.float64), dim=0)) + ln_cell


def grid_evidence(
    ln_posterior: Callable[[torch.Tensor], torch.Tensor],
    bounds: np.ndarray,
    points_per_axis: int | None = None,
    batch: int = 65536,
    dtype: torch.dtype = torch.float64,
) -> GridEvidence:
    """ln Z of an unnormalised log posterior (ln L + normalised ln prior) over a box.

    Arguments:
        ln_posterior: batched function theta (B, D) -> (B,) (torch), -inf outside the prior.
        bounds: (D, 2) box that holds the prior's support (see ``Prior.bounds``).
        points_per_axis: grid points per axis (default 2000, 400, 100 for D = 1, 2, 3).
        batch: evaluations per call.
        dtype: torch dtype of the grid.
    """
    bounds = np.asarray(bounds, dtype=np.float64)
    if bounds.ndim != 2 or bounds.shape[1] != 2 or not 1 <= bounds.shape[0] <= 3:
        raise ValueError(
            f"grid_evidence integrates 1-3 parameters; bounds must have shape (D, 2) with "
            f"D in 1..3, got {bounds.shape}"
        )
    if not np.all(bounds[:, 1] > bounds[:, 0]):
        raise ValueError(f"every bound must have high > low; got {bounds.tolist()}")
    ndim = bounds.shape[0]
    n = points_per_axis or {1: 2000, 2: 400, 3: 100}[ndim]
    if n < 4 or n % 2:
        raise ValueError(f"points_per_axis must be an even integer >= 4; got {n}")
    fine = _ln_z_on_grid(ln_posterior, bounds, n, batch, dtype)
    coarse = _ln_z_on_grid(ln_posterior, bounds, n // 2, batch, dtype)
    return GridEvidence(ln_z=fine, ln_z_err=abs(fine - coarse), points_per_axis=n)
