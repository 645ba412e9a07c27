"""What every chain reader returns, and the checks they share.

The evidence machinery (learned harmonic mean, McEwen et al. 2021, arXiv:2111.12720) keeps
chains separate because they are its error replicates, so every reader returns
(nchains, nsamples, ndim) samples with their (nchains, nsamples) ln posterior, the parameter
names and, for weighted formats, (nchains, nsamples) non-negative sample weights.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import numpy as np

__all__ = [
    "Chains",
    "LN_POSTERIOR_NAMES",
    "NOT_PARAMETERS",
    "WEIGHT_NAMES",
    "discard_burn_in",
    "from_arrays",
    "optional_import",
]

LN_POSTERIOR_NAMES = ("ln_posterior", "lnpost", "log_posterior", "logpost", "lnprob", "log_prob")
WEIGHT_NAMES = ("weights", "weight")
NOT_PARAMETERS = {
    "chain",
    "walker",
    "step",
    "iteration",
    "weight",
    "weights",
    "ln_likelihood",
    "lnlike",
    "log_likelihood",
    "loglike",
    "loglikelihood",
    "ln_prior",
    "lnprior",
    "log_prior",
    "logprior",
    "accept",
    "acceptance",
    "pt_accept",
    "pt_acceptance",
    "minuslogpost",
    "minuslogprior",
    "chi2",
}


@dataclass
class Chains:
    """samples (nchains, nsamples, ndim), ln_posterior (nchains, nsamples), names, weights.

    ``weights`` is None for equally weighted samples, else (nchains, nsamples) >= 0 (e.g.
    GetDist multiplicities or importance weights); ``format`` names the reader used.
    """

    samples: np.ndarray
    ln_posterior: np.ndarray
    names: list[str]
    weights: np.ndarray | None = None
    format: str = ""


def optional_import(module: str, extra: str = "chains") -> ModuleType:
    """Import an optional dependency; missing -> one-line ValueError naming the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(
            f"reading this format needs the Python package {module!r}, which is not installed: "
            f"pip install 'normkit[{extra}]' (or pip install {module})"
        ) from None


def from_arrays(
    samples: np.ndarray,
    ln_posterior: np.ndarray,
    names: list[str] | None,
    where: str,
    weights: np.ndarray | None = None,
    format: str = "",
) -> Chains:
    """Shape-check and pack arrays: (n, d) samples become one chain; weights must be >= 0."""
    x = np.asarray(samples, dtype=np.float64)
    lp = np.asarray(ln_posterior, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim == 2:
        x = x[None]
        lp = lp.reshape(1, -1) if lp.ndim == 1 else lp
    if x.ndim != 3:
        raise ValueError(
            f"{where}: samples must have shape (nchains, nsamples, ndim) or (nsamples, ndim); "
            f"got {tuple(np.shape(samples))}"
        )
    if lp.shape != x.shape[:2]:
        need = x.shape[:2] if np.ndim(samples) == 3 else x.shape[1:2]
        raise ValueError(
            f"{where}: ln_posterior has shape {tuple(np.shape(ln_posterior))} but samples "
            f"{tuple(np.shape(samples))} need {need}"
        )
    w = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        w = w.reshape(1, -1) if w.ndim == 1 and lp.shape[0] == 1 else w
        if w.shape != lp.shape:
            raise ValueError(
                f"{where}: weights have shape {tuple(np.shape(weights))}; the samples need "
                f"{lp.shape}"
            )
        if not (np.isfinite(w).all() and (w >= 0).all() and (w > 0).any()):
            raise ValueError(f"{where}: weights must be finite, >= 0 and not all zero")
    if names is None or len(names) != x.shape[-1]:
        names = [f"p{j}" for j in range(x.shape[-1])]
    return Chains(x, lp, list(names), w, format)


def discard_burn_in(chains: Chains, fraction: float) -> Chains:
    """Drop the first ``fraction`` of every chain (the sampler's burn-in)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"burn-in fraction must lie in [0, 1), got {fraction}")
    start = int(round(fraction * chains.samples.shape[1]))
    if start == 0:
        return chains
    w = None if chains.weights is None else chains.weights[:, start:]
    return Chains(
        chains.samples[:, start:], chains.ln_posterior[:, start:], chains.names, w, chains.format
    )
