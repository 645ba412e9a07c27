r"""Loader for the ceffyl / PTArcade free-spectrum directory format.

A free-spectrum directory holds a kernel-density estimate of the posterior of
:math:`\log_{10}\rho_k` (seconds) for each frequency bin :math:`f_k = k/T_{\rm obs}`, tabulated
as a log probability density on a shared, evenly spaced grid. This is the representation of the
NANOGrav 15-year data used by PTArcade and ceffyl for fast spectral refits.

References:
    W. G. Lamb, S. R. Taylor, R. van Haasteren, "Rapid refitting techniques for Bayesian
    spectral characterization of the gravitational wave background using pulsar timing
    arrays", arXiv:2303.15442 (ceffyl).
    A. Mitridate et al., "PTArcade", arXiv:2306.16377.
    G. Agazie et al. (NANOGrav), "The NANOGrav 15-year data set: evidence for a
    gravitational-wave background", arXiv:2306.16213.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["FreeSpectrum", "load_free_spectrum", "MAX_FREQUENCIES", "DEFAULT_FREQUENCIES"]

MAX_FREQUENCIES = 30
DEFAULT_FREQUENCIES = 14

_REQUIRED = ("freqs.npy", "log10rhogrid.npy", "density.npy")


@dataclass(frozen=True)
class FreeSpectrum:
    """A tabulated free-spectrum posterior.

    Attributes:
        freqs: (N,) frequencies in Hz, ``f_k = k / T``.
        log10_rho_grid: (G,) evenly spaced grid of log10 rho (rho in seconds).
        ln_density: (N, G) ln probability density of log10 rho_k on the grid.
        path: the directory the data came from.
    """

    freqs: np.ndarray
    log10_rho_grid: np.ndarray
    ln_density: np.ndarray
    path: Path

    @property
    def nfreqs(self) -> int:
        return int(self.freqs.shape[0])

    @property
    def tspan(self) -> float:
        """Observation span T = 1 / f_1 in seconds."""
        return float(1.0 / self.freqs[0])

    @property
    def grid_step(self) -> float:
        return float(self.log10_rho_grid[1] - self.log10_rho_grid[0])


def load_free_spectrum(path: str | Path, nfreqs: int = DEFAULT_FREQUENCIES) -> FreeSpectrum:
    """Read a ceffyl/PTArcade free-spectrum directory and keep its first ``nfreqs`` bins.

    Arguments:
        path: directory holding ``freqs.npy``, ``log10rhogrid.npy`` and ``density.npy``
            (shape ``(1, N, G)`` or ``(N, G)``; ``bandwidths.npy`` and the text files are
            optional and unused).
        nfreqs: number of lowest frequency bins to use, 1 <= nfreqs <= min(30, N).

    Raises:
        FileNotFoundError: the directory or one of the required files is missing.
        ValueError: ``nfreqs`` out of range, or the arrays do not fit together.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"free-spectrum directory '{root}' does not exist")
    missing = [name for name in _REQUIRED if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"free-spectrum directory '{root}' lacks {', '.join(missing)}; "
            f"a ceffyl/PTArcade directory holds {', '.join(_REQUIRED)}"
        )
    if not isinstance(nfreqs, int | np.integer) or not 1 <= nfreqs <= MAX_FREQUENCIES:
        raise ValueError(f"nfreqs must be an integer in 1..{MAX_FREQUENCIES}; got {nfreqs!r}")

    freqs = np.asarray(np.load(root / "freqs.npy"), dtype=np.float64).reshape(-1)
    grid = np.asarray(np.load(root / "log10rhogrid.npy"), dtype=np.float64).reshape(-1)
    density = np.asarray(np.load(root / "density.npy"), dtype=np.float64)
    if density.ndim == 3 and density.shape[0] == 1:
        density = density[0]
    if density.ndim != 2:
        raise ValueError(
            f"density.npy in '{root}' has shape {density.shape}; expected (1, N, G) or (N, G)"
        )
    if density.shape != (freqs.shape[0], grid.shape[0]):
        raise ValueError(
            f"density.npy in '{root}' has shape {density.shape}; expected (N, G) = "
            f"({freqs.shape[0]}, {grid.shape[0]}) from freqs.npy and log10rhogrid.npy"
        )
    if grid.shape[0] < 2 or not np.all(np.diff(grid) > 0):
        raise ValueError(f"log10rhogrid.npy in '{root}' must be increasing with >= 2 values")
    steps = np.diff(grid)
    if not np.allclose(steps, steps[0], rtol=1e-6, atol=0.0):
        raise ValueError(f"log10rhogrid.npy in '{root}' is not evenly spaced")
    if not np.all(freqs > 0) or not np.all(np.diff(freqs) > 0):
        raise ValueError(f"freqs.npy in '{root}' must hold increasing positive frequencies")
    if nfreqs > freqs.shape[0]:
        raise ValueError(
            f"nfreqs={nfreqs} exceeds the {freqs.shape[0]} frequencies in '{root}'; "
            f"allowed 1..{min(MAX_FREQUENCIES, freqs.shape[0])}"
        )
    if not np.all(np.isfinite(density[:nfreqs])):
        raise ValueError(f"density.npy in '{root}' holds non-finite values")
    return FreeSpectrum(
        freqs=freqs[:nfreqs].copy(),
        log10_rho_grid=grid,
        ln_density=np.ascontiguousarray(density[:nfreqs]),
        path=root,
    )
