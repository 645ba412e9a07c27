r"""The free-spectrum refit likelihood of a spectral model (ceffyl / PTArcade style).

    ln L(theta) = sum_{k < N} lnpdf_k( 0.5 log10 rho_k^2(theta) ),

with lnpdf_k the tabulated KDE of the free-spectrum posterior of log10 rho_k (rho in seconds)
on an evenly spaced grid g_0 < ... < g_{G-1} (the free-spectrum prior is uniform, so the
posterior density is the likelihood up to a constant that cancels in Bayes factors).

Interpolation and grid edges (documented choices):
    * ``interpolation="linear"`` (default): linear interpolation between the two grid points
      around x; ``"nearest"``: the value of the nearest grid point (ceffyl's binned lookup).
      The KDE is smooth on the scale of the grid (steps of 0.0015 in log10 rho, bandwidths of
      0.05 or more), so both give the same ln Z (power law on NANOGrav 15-yr, grid: -18.3320
      either way), but the binned lookup makes ln L a staircase, whose steps a tail diagnostic
      of the harmonic-mean terms reads as a heavy tail (Pareto k 0.85 binned, 0.14 linear,
      power law, seed 0; benchmarks/RESULTS.md, 2026-12-02).
    * below the grid (x < g_0): the lowest bin, lnpdf_k(g_0). A model predicting far less
      power than the data resolve is as good as one at the bottom of the grid (the KDE is flat
      there: the data only bound rho from above).
    * above the grid (x > g_{G-1}, i.e. rho_k > 0.1 s for the NANOGrav grid): ln L = -inf
      (``above="-inf"``, default) or the density's floor min_j lnpdf_k(g_j) (``above="floor"``,
      useful for samplers that reject -inf). The NANOGrav grid tops out ~5 decades above the
      measured signal, where the KDE has long reached its floor, so both choices exclude such
      points for all practical purposes.

References:
    W. G. Lamb, S. R. Taylor, R. van Haasteren, arXiv:2303.15442 (ceffyl refits).
    A. Mitridate et al., "PTArcade", arXiv:2306.16377.
    A. Afzal et al. (NANOGrav), arXiv:2306.16219 (the refit likelihood).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .data import FreeSpectrum
from .models import SpectralModel

__all__ = ["FreeSpectrumLikelihood", "ModelPosterior"]


class FreeSpectrumLikelihood:
    """Sum over frequencies of the tabulated ln density at given 0.5 log10 rho_k^2.

    Arguments:
        data: the loaded free spectrum.
        interpolation: "nearest" or "linear".
        above: "-inf" or "floor" (see the module docstring).
    """

    def __init__(
        self, data: FreeSpectrum, interpolation: str = "linear", above: str = "-inf"
    ) -> None:
        if interpolation not in ("nearest", "linear"):
            raise ValueError(
                f"interpolation must be 'nearest' or 'linear'; got {interpolation!r}"
            )
        if above not in ("-inf", "floor"):
            raise ValueError(f"above must be '-inf' or 'floor'; got {above!r}")
        self.data = data
        self.interpolation = interpolation
        self.above = above
        self._tables: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def _table(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (dtype, device)
        if key not in self._tables:
            self._tables[key] = torch.as_tensor(self.data.ln_density, dtype=dtype, device=device)
        return self._tables[key]

    def per_frequency(self, log10_rho: torch.Tensor) -> torch.Tensor:
        """ln pdf_k at x = log10_rho (B, N) -> (B, N)."""
        table = self._table(log10_rho.dtype, log10_rho.device)
        n, g = table.shape
        if log10_rho.shape[-1] != n:
            raise ValueError(
                f"log10_rho has {log10_rho.shape[-1]} frequencies; the data have {n}"
            )
        g0 = float(self.data.log10_rho_grid[0])
        step = self.data.grid_step
        # fractional grid index; NaN (a spectrum undefined outside the prior, e.g. a negative
        # shape parameter) counts as above the grid: -inf or the floor, never an index
        pos = torch.nan_to_num((log10_rho - g0) / step, nan=math.inf)
        rows = torch.arange(n, device=log10_rho.device).expand_as(pos)
        if self.interpolation == "nearest":
            idx = torch.round(pos).clamp(0, g - 1).long()
            val = table[rows, idx]
        else:
            clamped = pos.clamp(0, g - 1)
            lo = clamped.floor().long().clamp(0, g - 2)
            t = clamped - lo
            val = (1 - t) * table[rows, lo] + t * table[rows, lo + 1]
        outside = pos > g - 1 + 0.5 * (self.interpolation == "nearest")
        if self.above == "-inf":
            fill = torch.full_like(val, -math.inf)
        else:
            fill = table.min(dim=1).values.expand_as(val)
        return torch.where(outside, fill, val)

    def __call__(self, log10_rho: torch.Tensor) -> torch.Tensor:
        """ln L for a batch of 0.5 log10 rho_k^2 values (B, N) -> (B,)."""
        return self.per_frequency(log10_rho).sum(dim=-1)


class ModelPosterior:
    """ln L, ln prior and ln posterior of a spectral model on a free spectrum, batched.

    Every method takes a batch theta (B, D) as a torch tensor (any float dtype) or a NumPy
    array (computed in float64) and returns the same kind, shape (B,).

    Arguments:
        model: the spectral model.
        data: the free spectrum.
        interpolation, above: see :class:`FreeSpectrumLikelihood`.
    """

    def __init__(
        self,
        model: SpectralModel,
        data: FreeSpectrum,
        interpolation: str = "linear",
        above: str = "-inf",
    ) -> None:
        self.model = model
        self.data = data
        self.likelihood = FreeSpectrumLikelihood(data, interpolation=interpolation, above=above)
        self._freqs = torch.as_tensor(data.freqs, dtype=torch.float64)

    @property
    def ndim(self) -> int:
        return self.model.ndim

    def log10_rho(self, theta: torch.Tensor) -> torch.Tensor:
        return self.model.log10_rho(theta, self._freqs.to(theta.dtype), self.data.tspan)

    def _apply(self, fn, theta):  # noqa: ANN001, ANN202 - internal numpy/torch dispatch
        if isinstance(theta, torch.Tensor):
            return fn(theta)
        arr = np.asarray(theta, dtype=np.float64)
        squeeze = arr.ndim == 1
        t = torch.as_tensor(np.atleast_2d(arr))
        out = fn(t).numpy()
        return out[0] if squeeze else out

    def _ln_likelihood(self, theta: torch.Tensor) -> torch.Tensor:
        return self.likelihood(self.log10_rho(theta))

    def _ln_posterior(self, theta: torch.Tensor) -> torch.Tensor:
        lp = self.model.prior.ln_prob(theta)
        # Outside the prior the spectrum may be NaN; the where() discards it either way.
        total = lp + self._ln_likelihood(theta)
        return torch.where(torch.isfinite(lp), total, lp)

    def ln_likelihood(self, theta: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        return self._apply(self._ln_likelihood, theta)

    def ln_prior(self, theta: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        return self._apply(self.model.prior.ln_prob, theta)

    def ln_posterior(self, theta: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Unnormalised ln L + ln prior; -inf outside the prior support."""
        return self._apply(self._ln_posterior, theta)
