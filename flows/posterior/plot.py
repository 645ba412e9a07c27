r"""Corner plots: posterior samples, optionally overlaid with a second set (the fitted flow's
samples), as histograms on the diagonal and 50% / 90% credible contours below it; PNG.

A visual check of the density behind the learned harmonic mean (McEwen et al. 2021,
arXiv:2111.12720): the flow's marginals should cover the chains' marginals. Used by the
evidence CLI and by ``flows.pta``.

Example:
    >>> import numpy as np
    >>> from flows.posterior.plot import corner_plot
    >>> x = np.random.default_rng(0).normal(size=(2000, 3))
    >>> path = corner_plot(x, "/tmp/corner-doctest.png", ["a", "b", "c"], other=x[::-1] * 1.1)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.files import write_atomically

__all__ = ["corner_plot"]


def corner_plot(
    samples: np.ndarray,
    path: str | Path,
    names: Sequence[str] | None = None,
    *,
    other: np.ndarray | None = None,
    labels: tuple[str, str] = ("chains", "flow"),
    title: str | None = None,
    weights: np.ndarray | None = None,
    max_dims: int = 8,
    bins: int = 40,
    dpi: int = 100,
) -> Path:
    """Write a lower-triangle corner plot of ``samples`` (and ``other``) to ``path``.

    Arguments:
        samples: (..., d) posterior samples (chains are flattened).
        path: PNG file to write (atomically).
        names: d parameter names (default p0, p1, ...).
        other: optional (..., d) second sample set drawn on top (e.g. the flow's samples).
        labels: legend entries for ``samples`` and ``other``.
        title: figure title.
        weights: optional per-sample weights of ``samples`` (weighted chains).
        max_dims: plot at most the first ``max_dims`` parameters.
        bins: histogram bins per axis (half as many for the 2-D contours).
        dpi: resolution of the PNG.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ndim = np.shape(samples)[-1]
    x = np.asarray(samples, dtype=np.float64).reshape(-1, ndim)
    sets = [(x, None if weights is None else np.asarray(weights, np.float64).ravel(), "k")]
    if other is not None:
        sets.append((np.asarray(other, dtype=np.float64).reshape(-1, ndim), None, "C1"))
    d = min(ndim, max_dims)
    names = list(names) if names is not None else [f"p{j}" for j in range(ndim)]
    both = np.concatenate([s[0][:, :d] for s in sets])
    lo, hi = np.percentile(both, 0.2, axis=0), np.percentile(both, 99.8, axis=0)
    hi = np.where(hi > lo, hi, lo + 1.0)
    size = max(2.2 * d, 3.5)
    fig, axes = plt.subplots(d, d, figsize=(size, size), squeeze=False)
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            for data, w, color in sets:
                if i == j:
                    ax.hist(data[:, i], bins=bins, range=(lo[i], hi[i]), weights=w,
                            density=True, histtype="step", color=color)
                    continue
                h, xe, ye = np.histogram2d(data[:, j], data[:, i], bins=bins // 2, weights=w,
                                           range=[(lo[j], hi[j]), (lo[i], hi[i])])
                levels = _credible_levels(h, (0.9, 0.5))
                if levels:
                    ax.contour(0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1]), h.T,
                               levels=levels, colors=color, linewidths=0.9)
            if i == d - 1:
                ax.set_xlabel(names[j], fontsize=8)
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(names[i], fontsize=8)
            elif i != j:
                ax.set_yticklabels([])
            if i == j:
                ax.set_yticks([])
            ax.tick_params(labelsize=6)
    handles = [plt.Line2D([], [], color=color) for _, _, color in sets]
    fig.legend(handles, list(labels[: len(sets)]), loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


def _credible_levels(h: np.ndarray, masses: Sequence[float]) -> list[float]:
    """Histogram heights enclosing the given probability masses (largest mass first)."""
    flat = np.sort(h.ravel())[::-1]
    total = flat.sum()
    if total <= 0:
        return []
    cum = np.cumsum(flat) / total
    levels = {float(flat[min(np.searchsorted(cum, m), len(flat) - 1)]) for m in masses}
    return sorted(lv for lv in levels if lv > 0)
