r"""The free spectrum with each model's median spectrum over the data violins (as in Afzal et
al. 2023, Fig. 1); the corner plots of the comparison are :func:`flows.posterior.plot.corner_plot`.

References:
    A. Afzal et al. (NANOGrav), arXiv:2306.16219, Fig. 1 (free-spectrum violins).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .data import FreeSpectrum  # noqa: E402
from .models import SpectralModel  # noqa: E402

__all__ = ["free_spectrum_plot", "median_spectrum"]


def median_spectrum(
    model: SpectralModel, samples: np.ndarray, data: FreeSpectrum, max_samples: int = 2000
) -> np.ndarray:
    """Median over posterior samples of 0.5 log10 rho_k^2 at the data frequencies, (N,)."""
    rng = np.random.default_rng(0)
    idx = rng.choice(len(samples), size=min(max_samples, len(samples)), replace=False)
    theta = torch.as_tensor(np.asarray(samples)[idx], dtype=torch.float64)
    freqs = torch.as_tensor(data.freqs, dtype=torch.float64)
    return np.median(model.log10_rho(theta, freqs, data.tspan).numpy(), axis=0)


def free_spectrum_plot(
    data: FreeSpectrum,
    medians: Mapping[str, np.ndarray],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Violins of the free-spectrum density per frequency with model median spectra; PNG."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    grid = data.log10_rho_grid
    log_f = np.log10(data.freqs)
    width = 0.8 * np.min(np.diff(log_f)) if len(log_f) > 1 else 0.1
    for k in range(data.nfreqs):
        pdf = np.exp(data.ln_density[k] - data.ln_density[k].max())
        keep = pdf > 1e-3
        y = grid[keep]
        half = 0.5 * width * pdf[keep]
        ax.fill_betweenx(y, log_f[k] - half, log_f[k] + half, color="0.6", alpha=0.6, lw=0)
    for i, (name, med) in enumerate(medians.items()):
        ax.plot(log_f, med, "-o", ms=3, color=f"C{i}", label=name)
    ax.set_xlabel(r"$\log_{10}(f / \mathrm{Hz})$")
    ax.set_ylabel(r"$\log_{10}(\rho / \mathrm{s})$")
    lows = [np.min(m) for m in medians.values()] + [-9.5]
    ax.set_ylim(max(min(lows) - 0.5, -11.0), -5.0)
    ax.legend(fontsize=7, loc="upper right")
    if title:
        ax.set_title(title, fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
