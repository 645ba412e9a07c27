r"""Load posterior chains from .npz, .npy pairs and whitespace text files.

Formats (``load_chains(path)``):

- ``.npz`` with ``samples`` of shape (nchains, nsamples, ndim) or (nsamples, ndim) and
  ``ln_posterior`` of the matching leading shape (aliases: ``log_posterior``, ``lnpost``,
  ``log_prob``, ``lnprob``; or name the key with ``column``); optional ``names``.
- ``X.npy``: the samples; the ln posterior is read from the sibling ``X_ln_posterior.npy``
  (or pass ``"samples.npy,lnpost.npy"`` as the path).
- Anything else is a whitespace text table, one row per sample (one chain per file). A header
  line (optionally starting with ``#``) names the columns; the ln-posterior column is
  ``column`` (a name, or an integer index, negative from the end) or the first of
  ``ln_posterior, lnpost, log_posterior, logpost, lnprob, log_prob``. A column ``chain`` splits
  the rows into chains (equal lengths). Columns named like likelihoods, priors, weights,
  acceptance rates or step counters are not parameters; all others are. Without a header
  (PTMCMC's ``chain_1.txt``: parameters, then ln posterior, ln likelihood, acceptance rates)
  ``column`` must be an integer and the parameters are the columns before it.

The evidence machinery follows the learned-harmonic-mean conventions of McEwen et al. 2021
(arXiv:2111.12720): chains are kept separate because they are the error replicates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Chains", "LN_POSTERIOR_NAMES", "load_chains"]

LN_POSTERIOR_NAMES = ("ln_posterior", "lnpost", "log_posterior", "logpost", "lnprob", "log_prob")
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
}


@dataclass
class Chains:
    """samples (nchains, nsamples, ndim), ln_posterior (nchains, nsamples), parameter names."""

    samples: np.ndarray
    ln_posterior: np.ndarray
    names: list[str]


def load_chains(path: str | Path, column: str | int | None = None) -> Chains:
    """Read chains from ``path`` (see the module docstring for the formats)."""
    text = str(path)
    if "," in text and text.endswith(".npy"):
        sample_path, lp_path = (Path(p) for p in text.split(",", 1))
        return _from_arrays(_load_npy(sample_path), _load_npy(lp_path), None, text)
    path = Path(text)
    if not path.exists():
        raise FileNotFoundError(f"chain file {text!r} does not exist")
    if path.suffix == ".npz":
        return _load_npz(path, column)
    if path.suffix == ".npy":
        stem = path.with_suffix("")
        lp_path = Path(f"{stem}_ln_posterior.npy")
        if not lp_path.exists():
            raise FileNotFoundError(
                f"{text!r} holds samples only; its ln posterior must be in {str(lp_path)!r} "
                "(or pass 'samples.npy,lnpost.npy')"
            )
        return _from_arrays(_load_npy(path), _load_npy(lp_path), None, text)
    return _load_text(path, column)


def _load_npy(path: Path) -> np.ndarray:
    if not path.exists():
        raise FileNotFoundError(f"array file {str(path)!r} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"{str(path)!r} is not a readable .npy array: {err}") from None


def _load_npz(path: Path, column: str | int | None) -> Chains:
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"{str(path)!r} is not a readable .npz archive: {err}") from None
    keys = list(data.keys())
    if "samples" not in keys:
        raise ValueError(f"{str(path)!r} has no 'samples' array; it holds: {', '.join(keys)}")
    candidates = [column] if isinstance(column, str) else list(LN_POSTERIOR_NAMES)
    found = next((k for k in candidates if k in keys), None)
    if found is None:
        raise ValueError(
            f"{str(path)!r} has no ln-posterior array (looked for {', '.join(candidates)}); "
            f"it holds: {', '.join(keys)}"
        )
    names = [str(n) for n in data["names"]] if "names" in keys else None
    return _from_arrays(data["samples"], data[found], names, str(path))


def _from_arrays(
    samples: np.ndarray, ln_posterior: np.ndarray, names: list[str] | None, where: str
) -> Chains:
    x = np.asarray(samples, dtype=np.float64)
    lp = np.asarray(ln_posterior, dtype=np.float64)
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
    if names is None or len(names) != x.shape[-1]:
        names = [f"p{j}" for j in range(x.shape[-1])]
    return Chains(x, lp, names)


def _load_text(path: Path, column: str | int | None) -> Chains:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{str(path)!r} is empty")
    first = lines[0].lstrip("#").split()
    header = None
    try:
        [float(tok) for tok in first]
    except ValueError:
        header = first
    body = lines[1:] if header is not None else lines
    body = [ln for ln in body if not ln.lstrip().startswith("#")]
    try:
        table = np.array([[float(tok) for tok in ln.split()] for ln in body], dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"{str(path)!r}: a row is not numeric ({err})") from None
    if table.ndim != 2 or len(table) == 0:
        raise ValueError(f"{str(path)!r}: rows have different numbers of columns")
    ncol = table.shape[1]
    if header is not None and len(header) != ncol:
        raise ValueError(f"{str(path)!r}: the header names {len(header)} columns, rows have {ncol}")
    if header is None:
        if not isinstance(column, int):
            raise ValueError(
                f"{str(path)!r} has no header line; give the ln-posterior column as an integer "
                "index (e.g. --column -4 for PTMCMC chains)"
            )
        idx = _index(column, ncol, path)
        params = list(range(idx))
        names = [f"p{j}" for j in params]
        if not params:
            raise ValueError(f"{str(path)!r}: no parameter columns before column {column}")
        return _from_arrays(table[:, params], table[:, idx], names, str(path))
    lowered = [h.lower() for h in header]
    if isinstance(column, int):
        idx = _index(column, ncol, path)
    else:
        wanted = [column.lower()] if column else list(LN_POSTERIOR_NAMES)
        idx = next((lowered.index(w) for w in wanted if w in lowered), None)
        if idx is None:
            raise ValueError(
                f"{str(path)!r} has no ln-posterior column (looked for {', '.join(wanted)}); "
                f"columns: {', '.join(header)}"
            )
    params = [j for j, h in enumerate(lowered) if j != idx and h not in NOT_PARAMETERS]
    if "chain" in lowered:
        labels = table[:, lowered.index("chain")]
        groups = [np.flatnonzero(labels == v) for v in np.unique(labels)]
        if len({len(g) for g in groups}) != 1:
            raise ValueError(
                f"{str(path)!r}: chains have different lengths {sorted({len(g) for g in groups})}"
                "; cut them to a common length"
            )
        x = np.stack([table[g][:, params] for g in groups])
        lp = np.stack([table[g, idx] for g in groups])
        return _from_arrays(x, lp, [header[j] for j in params], str(path))
    return _from_arrays(table[:, params], table[:, idx], [header[j] for j in params], str(path))


def _index(column: int, ncol: int, path: Path) -> int:
    if not -ncol <= column < ncol:
        raise ValueError(f"{str(path)!r}: column {column} is out of range for {ncol} columns")
    return column % ncol
