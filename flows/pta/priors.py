r"""Priors of the PTA spectral models: independent uniform blocks and correlated Gaussians.

The SMBHB astrophysical prior is the bivariate normal on (log10 A, gamma) fitted by NANOGrav
to holodeck population synthesis and used by PTArcade for every "+ SMBHB" model.

References:
    A. Afzal et al. (NANOGrav), "The NANOGrav 15 yr Data Set: Search for Signals from New
    Physics", ApJL 951 L11 (2023), arXiv:2306.16219 (the SMBHB prior).
    A. Mitridate et al., "PTArcade", arXiv:2306.16377.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy.special import ndtri

__all__ = ["Uniform", "BivariateNormal", "Prior", "GAUSSIAN_BOX_SIGMAS"]

# Gaussian prior blocks are given a finite box of +- this many standard deviations for grid
# integration and for bounded flows; the mass outside is < 1e-8 and is neglected.
GAUSSIAN_BOX_SIGMAS = 6.0


@dataclass(frozen=True)
class Uniform:
    """Uniform prior U(low, high) on one parameter."""

    name: str
    low: float
    high: float

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,)


@dataclass(frozen=True)
class BivariateNormal:
    """Bivariate normal prior N(mean, cov) on two parameters."""

    names: tuple[str, str]
    mean: tuple[float, float]
    cov: tuple[tuple[float, float], tuple[float, float]]


PriorBlock = Uniform | BivariateNormal


@lru_cache(maxsize=16)
def _gaussian_constants(block: BivariateNormal) -> tuple[list[list[float]], float]:
    """Precision matrix and ln(2 pi sqrt(det cov)) of a bivariate normal block."""
    cov = np.asarray(block.cov, dtype=np.float64)
    prec = np.linalg.inv(cov).tolist()
    return prec, math.log(2 * math.pi) + 0.5 * math.log(np.linalg.det(cov))


class Prior:
    """A product of prior blocks over an ordered parameter vector.

    Arguments:
        blocks: the blocks, in parameter order (a BivariateNormal covers two adjacent
            parameters).
    """

    def __init__(self, blocks: Sequence[PriorBlock]) -> None:
        self.blocks = tuple(blocks)
        names = [n for b in self.blocks for n in b.names]
        if len(set(names)) != len(names):
            raise ValueError(f"prior parameter names must be unique; got {names}")
        self.names = tuple(names)

    @property
    def ndim(self) -> int:
        return len(self.names)

    def bounds(self) -> np.ndarray:
        """(ndim, 2) box: uniform limits, Gaussian mean +- GAUSSIAN_BOX_SIGMAS sigma."""
        rows: list[tuple[float, float]] = []
        for block in self.blocks:
            if isinstance(block, Uniform):
                rows.append((block.low, block.high))
            else:
                for i in range(2):
                    sd = math.sqrt(block.cov[i][i])
                    rows.append(
                        (block.mean[i] - GAUSSIAN_BOX_SIGMAS * sd,
                         block.mean[i] + GAUSSIAN_BOX_SIGMAS * sd)
                    )
        return np.asarray(rows, dtype=np.float64)

    def support(self) -> list[tuple[float, float] | None]:
        """Per-parameter hard support: (low, high) for uniform blocks, None for Gaussians."""
        out: list[tuple[float, float] | None] = []
        for block in self.blocks:
            if isinstance(block, Uniform):
                out.append((block.low, block.high))
            else:
                out.extend([None, None])
        return out

    def ln_prob(self, theta: torch.Tensor) -> torch.Tensor:
        """Normalised log prior density of a batch ``theta`` of shape (B, ndim) -> (B,).

        Points outside a uniform block get -inf.
        """
        out = torch.zeros(theta.shape[:-1], dtype=theta.dtype, device=theta.device)
        col = 0
        for block in self.blocks:
            if isinstance(block, Uniform):
                x = theta[..., col]
                inside = (x >= block.low) & (x <= block.high)
                out = out + torch.where(
                    inside,
                    torch.full_like(x, -math.log(block.high - block.low)),
                    torch.full_like(x, -math.inf),
                )
                col += 1
            else:
                x = theta[..., col : col + 2]
                mean = torch.as_tensor(block.mean, dtype=theta.dtype, device=theta.device)
                prec, norm = _gaussian_constants(block)
                d = x - mean
                maha = (
                    prec[0][0] * d[..., 0] ** 2 + 2 * prec[0][1] * d[..., 0] * d[..., 1]
                    + prec[1][1] * d[..., 1] ** 2
                )
                out = out - 0.5 * maha - norm
                col += 2
        return out

    def ln_prob_numpy(self, theta: np.ndarray) -> np.ndarray:
        """NumPy version of :meth:`ln_prob` (float64)."""
        return self.ln_prob(torch.as_tensor(np.asarray(theta, dtype=np.float64))).numpy()

    def from_unit_cube(self, u: np.ndarray) -> np.ndarray:
        """Map points of the unit cube (..., ndim) to the prior (nested-sampling transform)."""
        u = np.asarray(u, dtype=np.float64)
        theta = np.empty_like(u)
        col = 0
        for block in self.blocks:
            if isinstance(block, Uniform):
                theta[..., col] = block.low + (block.high - block.low) * u[..., col]
                col += 1
            else:
                chol = np.linalg.cholesky(np.asarray(block.cov, dtype=np.float64))
                z = ndtri(np.clip(u[..., col : col + 2], 1e-300, 1 - 1e-16))
                theta[..., col : col + 2] = np.asarray(block.mean) + z @ chol.T
                col += 2
        return theta

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` prior samples, shape (n, ndim)."""
        return self.from_unit_cube(rng.uniform(size=(n, self.ndim)))
