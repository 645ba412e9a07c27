r"""Plots of the PTA comparison: corner plots (posterior vs flow samples) and the free spectrum
with each model's median spectrum over the data violins (as in Afzal et al. 2023, Fig. 1).

References:
    A. Afzal et al. (NANOGrav), arXiv:2306.16219, Fig. 1 (free-spectrum violins).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .data import FreeSpectrum  # noqa: E402
from .models import SpectralModel  # noqa: E402

__all__ = ["corner_plot", "free_spectrum_plot", "median_spectrum"]


def corner_plot(
    samples: np.ndarray,
    names: Sequence[str],
    path: str | Path,
    other: np.ndarray | None = None,
    labels: tuple[str, str] = ("posterior (MCMC)", "flow"),
    title: str | None = None,
    bins: int = 40,
) -> Path:
    """Corner plot of (n, d) samples, optionally overlaid with a second (m, d) set; PNG."""
    samples = np.asarray(samples)
    d = samples.shape[1]
    both = samples if other is None else np.concatenate([samples, other])
    lo = np.percentile(both, 0.2, axis=0)
    hi = np.percentile(both, 99.8, axis=0)
    size = max(2.2 * d, 3.5)
    fig, axes = plt.subplots(d, d, figsize=(size, size), squeeze=False)
    sets = [(samples, "C0")] + ([] if other is None else [(np.asarray(other), "C1")])
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            for data, color in sets:
                if i == j:
                    ax.hist(data[:, i], bins=bins, range=(lo[i], hi[i]), density=True,
                            histtype="step", color=color)
                else:
                    h, xe, ye = np.histogram2d(data[:, j], data[:, i], bins=bins // 2,
                                               range=[(lo[j], hi[j]), (lo[i], hi[i])])
                    levels = _credible_levels(h, (0.9, 0.5))
                    if levels is not None:
                        ax.contour(0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1]), h.T,
                                   levels=levels, colors=color, linewidths=1)
            if i == d - 1:
                ax.set_xlabel(names[j], fontsize=8)
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(names[i], fontsize=8)
            elif i != j:
                ax.set_yticklabels([])
            ax.tick_params(labelsize=6)
    handles = [plt.Line2D([], [], color=c) for _, c in sets]
    fig.legend(handles, list(labels[: len(sets)]), loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _credible_levels(h: np.ndarray, masses: Sequence[float]) -> list[float] | None:
    flat = np.sort(h.ravel())[::-1]
    total = flat.sum()
    if total <= 0:
        return None
    cum = np.cumsum(flat) / total
    levels = sorted({float(flat[min(np.searchsorted(cum, m), len(flat) - 1)]) for m in masses})
    levels = [lv for lv in levels if lv > 0]
    return levels or None


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
