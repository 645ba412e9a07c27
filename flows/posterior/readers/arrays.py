r"""Chains from NumPy files and whitespace text tables.

- ``.npz`` with ``samples`` of shape (nchains, nsamples, ndim) or (nsamples, ndim) and
  ``ln_posterior`` of the matching leading shape (aliases: ``log_posterior``, ``lnpost``,
  ``log_prob``, ``lnprob``; or name the key with ``column``); optional ``names`` and
  ``weights`` (or ``weight``).
- ``X.npy``: the samples; the ln posterior is read from the sibling ``X_ln_posterior.npy``
  (or pass ``"samples.npy,lnpost.npy"`` as the path).
- A whitespace text table, one row per sample (one chain per file). A header line
  (optionally starting with ``#``) names the columns; the ln-posterior column is ``column``
  (a name, or an integer index, negative from the end) or the first of ``ln_posterior, lnpost,
  log_posterior, logpost, lnprob, log_prob``. A column ``chain`` splits the rows into chains
  (equal lengths), a column ``weight``/``weights`` holds sample weights. Columns named like
  likelihoods, priors, weights, acceptance rates or step counters are not parameters. Without
  a header ``column`` must be an integer and the parameters are the columns before it.

``np.load`` always runs with ``allow_pickle=False``: an object array is refused, never run.
The conventions follow the learned-harmonic-mean tools (McEwen et al. 2021, arXiv:2111.12720).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from flows.posterior.readers.common import (
    LN_POSTERIOR_NAMES,
    NOT_PARAMETERS,
    WEIGHT_NAMES,
    Chains,
    from_arrays,
)

__all__ = ["read_npy", "read_npz", "read_text"]


def read_npy(path: Path, column: str | int | None = None) -> Chains:
    """``X.npy`` + ``X_ln_posterior.npy``, or the pair ``"samples.npy,lnpost.npy"``."""
    text = str(path)
    if "," in text:
        sample_path, lp_path = (Path(p) for p in text.split(",", 1))
    else:
        sample_path = Path(text)
        lp_path = Path(f"{sample_path.with_suffix('')}_ln_posterior.npy")
        if not lp_path.exists():
            raise ValueError(
                f"{text!r} holds samples only; its ln posterior must be in {str(lp_path)!r} "
                "(or pass 'samples.npy,lnpost.npy')"
            )
    return from_arrays(_load_npy(sample_path), _load_npy(lp_path), None, text, format="npy")


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ValueError(f"array file {str(path)!r} does not exist or is not a file")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{str(path)!r} is not a readable .npy array: {err}") from None


def read_npz(path: Path, column: str | int | None = None) -> Chains:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.keys()}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise ValueError(f"{str(path)!r} is not a readable .npz archive: {err}") from None
    keys = list(arrays)
    if "samples" not in keys:
        raise ValueError(f"{str(path)!r} has no 'samples' array; it holds: {', '.join(keys)}")
    candidates = [column] if isinstance(column, str) else list(LN_POSTERIOR_NAMES)
    found = next((k for k in candidates if k in keys), None)
    if found is None:
        raise ValueError(
            f"{str(path)!r} has no ln-posterior array (looked for {', '.join(candidates)}); "
            f"it holds: {', '.join(keys)}"
        )
    names = [str(n) for n in arrays["names"]] if "names" in keys else None
    weight_key = next((k for k in WEIGHT_NAMES if k in keys), None)
    weights = arrays[weight_key] if weight_key else None
    return from_arrays(arrays["samples"], arrays[found], names, str(path), weights, "npz")


def read_text(path: Path, column: str | int | None = None) -> Chains:
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except UnicodeDecodeError:
        raise ValueError(
            f"{str(path)!r} is neither a known binary format nor a text table; "
            "give --format if it is one of the supported formats"
        ) from None
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
        idx = column_index(column, ncol, path)
        if idx == 0:
            raise ValueError(f"{str(path)!r}: no parameter columns before column {column}")
        names = [f"p{j}" for j in range(idx)]
        return from_arrays(table[:, :idx], table[:, idx], names, str(path), format="text")
    lowered = [h.lower() for h in header]
    if isinstance(column, int):
        idx = column_index(column, ncol, path)
    else:
        wanted = [column.lower()] if column else list(LN_POSTERIOR_NAMES)
        idx = next((lowered.index(w) for w in wanted if w in lowered), None)
        if idx is None:
            raise ValueError(
                f"{str(path)!r} has no ln-posterior column (looked for {', '.join(wanted)}); "
                f"columns: {', '.join(header)}"
            )
    params = [j for j, h in enumerate(lowered) if j != idx and h not in NOT_PARAMETERS]
    weight_col = next((lowered.index(w) for w in WEIGHT_NAMES if w in lowered), None)
    names = [header[j] for j in params]
    groups = [np.arange(len(table))]
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
    w = None if weight_col is None else np.stack([table[g, weight_col] for g in groups])
    return from_arrays(x, lp, names, str(path), w, "text")


def column_index(column: int, ncol: int, path: Path) -> int:
    """A possibly negative column index checked against ``ncol`` columns."""
    if not -ncol <= column < ncol:
        raise ValueError(f"{str(path)!r}: column {column} is out of range for {ncol} columns")
    return column % ncol
