r"""Corner plot of posterior samples against samples of the fitted flow (matplotlib, PNG).

A visual check of the density behind the learned harmonic mean (McEwen et al. 2021,
arXiv:2111.12720): the flow's marginals should cover the chains' marginals.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["corner_plot"]


def corner_plot(
    samples: np.ndarray,
    flow_samples: np.ndarray,
    path: str | Path,
    names: Sequence[str] | None = None,
    max_dims: int = 8,
    bins: int = 40,
) -> Path:
    """Write a lower-triangle corner plot (histograms + 2-D contours) of both sample sets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(samples, dtype=np.float64).reshape(-1, np.shape(samples)[-1])
    y = np.asarray(flow_samples, dtype=np.float64).reshape(-1, x.shape[-1])
    d = min(x.shape[1], max_dims)
    names = list(names or [f"p{j}" for j in range(x.shape[1])])
    fig, axes = plt.subplots(d, d, figsize=(2.2 * d + 1, 2.2 * d + 1), squeeze=False)
    lo = np.percentile(x[:, :d], 0.5, axis=0)
    hi = np.percentile(x[:, :d], 99.5, axis=0)
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            if i == j:
                edges = np.linspace(lo[i], hi[i], bins + 1)
                ax.hist(x[:, i], edges, density=True, histtype="step", color="k", label="chains")
                ax.hist(y[:, i], edges, density=True, histtype="step", color="C1", label="flow")
                ax.set_yticks([])
            else:
                for data, color in ((x, "k"), (y, "C1")):
                    h, xe, ye = np.histogram2d(
                        data[:, j],
                        data[:, i],
                        bins=bins // 2,
                        range=[[lo[j], hi[j]], [lo[i], hi[i]]],
                        density=True,
                    )
                    levels = _levels(h)
                    if len(levels) > 1:
                        centres = (xe[:-1] + xe[1:]) / 2, (ye[:-1] + ye[1:]) / 2
                        ax.contour(*centres, h.T, levels=levels, colors=color, linewidths=0.8)
            if i == d - 1:
                ax.set_xlabel(names[j])
            if j == 0 and i > 0:
                ax.set_ylabel(names[i])
    axes[0, 0].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _levels(h: np.ndarray) -> np.ndarray:
    """Density levels enclosing about 39% and 86% of the mass (1 and 2 sigma in 2-D)."""
    flat = np.sort(h.ravel())[::-1]
    if flat.sum() <= 0:
        return np.array([])
    cum = np.cumsum(flat) / flat.sum()
    levels = [flat[min(np.searchsorted(cum, q), len(flat) - 1)] for q in (0.86, 0.39)]
    return np.unique(np.array(levels))
