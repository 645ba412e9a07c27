r"""Loader for the ceffyl / PTArcade free-spectrum directory format, and the bundled data sets.

A free-spectrum directory holds a kernel-density estimate of the posterior of
:math:`\log_{10}\rho_k` (seconds) for each frequency bin :math:`f_k = k/T_{\rm obs}`, tabulated
as a log probability density on a shared, evenly spaced grid. This is the representation of the
NANOGrav 15-year data used by PTArcade and ceffyl for fast spectral refits.

Two data sets ship inside the package (:mod:`flows.pta.datasets`): ``ng15-hd`` (the
Hellings-Downs correlated free spectrum, the default) and ``ng15-cp`` (common uncorrelated
process). Any other release in the same layout (EPTA, PPTA, IPTA, ...) is read from
its directory. Each ``X.npy`` of the layout may also be stored as ``X.npz`` holding one array
(the bundled densities are, to keep the package small).

References:
    W. G. Lamb, S. R. Taylor, R. van Haasteren, "Rapid refitting techniques for Bayesian
    spectral characterization of the gravitational wave background using pulsar timing
    arrays", arXiv:2303.15442 (ceffyl).
    A. Mitridate et al., "PTArcade", arXiv:2306.16377.
    G. Agazie et al. (NANOGrav), "The NANOGrav 15-year data set: evidence for a
    gravitational-wave background", arXiv:2306.16213.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .datasets import BUNDLED, DEFAULT_DATA, DEFAULT_FREQUENCIES, MAX_FREQUENCIES

__all__ = [
    "BUNDLED",
    "DEFAULT_DATA",
    "DEFAULT_FREQUENCIES",
    "FreeSpectrum",
    "MAX_FREQUENCIES",
    "load_free_spectrum",
    "resolve_data",
]

_REQUIRED = ("freqs", "log10rhogrid", "density")


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


def resolve_data(data: str | Path) -> Path:
    """The directory of ``data``: a bundled name (see :data:`BUNDLED`) or a directory path.

    An existing directory always wins, so a folder that happens to be called ``ng15-hd`` is
    read as given.
    """
    root = Path(data)
    if root.is_dir():
        return root
    if str(data) in BUNDLED:
        return BUNDLED[str(data)]
    raise FileNotFoundError(
        f"free-spectrum directory '{root}' does not exist; give a ceffyl/PTArcade directory "
        f"or a bundled data set: {', '.join(BUNDLED)}"
    )


def _array_file(root: Path, stem: str) -> Path | None:
    for suffix in (".npy", ".npz"):
        if (root / f"{stem}{suffix}").is_file():
            return root / f"{stem}{suffix}"
    return None


def _load_array(path: Path) -> np.ndarray:
    """One array from ``X.npy`` or from an ``X.npz`` that holds exactly one (never pickles)."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded
        with loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        reason = " ".join(str(exc).split())[:120]
        raise ValueError(f"{path} is not a readable NumPy file ({reason})") from None
    if len(arrays) != 1:
        raise ValueError(
            f"{path} holds {len(arrays)} arrays ({', '.join(arrays)}); a compressed ceffyl "
            "file must hold exactly one"
        )
    return next(iter(arrays.values()))


def load_free_spectrum(
    path: str | Path = DEFAULT_DATA, nfreqs: int = DEFAULT_FREQUENCIES
) -> FreeSpectrum:
    """Read a ceffyl/PTArcade free-spectrum directory and keep its first ``nfreqs`` bins.

    Arguments:
        path: a bundled data set name (``"ng15-hd"``, the default, or ``"ng15-cp"``) or a
            directory holding ``freqs``, ``log10rhogrid`` and ``density`` as ``.npy`` (or
            one-array ``.npz``) files; density has shape ``(1, N, G)`` or ``(N, G)``;
            ``bandwidths.npy`` and the text files are optional and unused.
        nfreqs: number of lowest frequency bins to use, 1 <= nfreqs <= min(30, N).

    Raises:
        FileNotFoundError: the directory or one of the required files is missing.
        ValueError: ``nfreqs`` out of range, unreadable files, or arrays that do not fit.
    """
    root = resolve_data(path)
    files = {stem: _array_file(root, stem) for stem in _REQUIRED}
    missing = [f"{stem}.npy" for stem, file in files.items() if file is None]
    if missing:
        raise FileNotFoundError(
            f"free-spectrum directory '{root}' lacks {', '.join(missing)}; "
            f"a ceffyl/PTArcade directory holds {', '.join(s + '.npy' for s in _REQUIRED)}"
        )
    if not isinstance(nfreqs, int | np.integer) or not 1 <= nfreqs <= MAX_FREQUENCIES:
        raise ValueError(f"nfreqs must be an integer in 1..{MAX_FREQUENCIES}; got {nfreqs!r}")

    freqs = np.asarray(_load_array(files["freqs"]), dtype=np.float64).reshape(-1)
    grid = np.asarray(_load_array(files["log10rhogrid"]), dtype=np.float64).reshape(-1)
    density = np.asarray(_load_array(files["density"]), dtype=np.float64)
    if density.ndim == 3 and density.shape[0] == 1:
        density = density[0]
    if density.ndim != 2:
        raise ValueError(
            f"the density in '{root}' has shape {density.shape}; expected (1, N, G) or (N, G)"
        )
    if density.shape != (freqs.shape[0], grid.shape[0]):
        raise ValueError(
            f"the density in '{root}' has shape {density.shape}; expected (N, G) = "
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
        raise ValueError(f"the density in '{root}' holds non-finite values")
    return FreeSpectrum(
        freqs=freqs[:nfreqs].copy(),
        log10_rho_grid=grid,
        ln_density=np.ascontiguousarray(density[:nfreqs]),
        path=root,
    )
