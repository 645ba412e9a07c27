r"""Chains from bilby result files (Ashton et al. 2019, arXiv:1811.02042), JSON or HDF5.

A result's ``posterior`` table holds equally weighted samples (bilby resamples nested-sampling
output) with ``log_likelihood`` and ``log_prior`` columns; ln posterior = their sum. The
parameters are the result's ``search_parameter_keys`` (the sampled ones; the table also holds
fixed and derived columns). JSON is read with the standard library (bilby stores the table as
``{"__dataframe__": true, "content": {column: values}}``), HDF5 with h5py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from flows.posterior.readers.common import Chains, from_arrays, optional_import

__all__ = ["is_bilby_hdf5", "read_bilby"]


def is_bilby_hdf5(handle) -> bool:  # noqa: ANN001 - an open h5py.File
    return "posterior" in handle and "search_parameter_keys" in handle


def _text(value) -> str:  # noqa: ANN001
    return value.decode() if isinstance(value, bytes) else str(value)


def _from_json(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    try:
        result = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not a readable bilby JSON result: {err}") from None
    posterior = result.get("posterior") if isinstance(result, dict) else None
    if isinstance(posterior, dict) and "content" in posterior:
        posterior = posterior["content"]
    if not isinstance(posterior, dict):
        raise ValueError(f"{str(path)!r} has no bilby 'posterior' table")
    table = {k: np.asarray(v, dtype=np.float64) for k, v in posterior.items()
             if isinstance(v, list) and v and isinstance(v[0], int | float)}
    return table, list(result.get("search_parameter_keys") or [])


def _from_hdf5(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    h5py = optional_import("h5py")
    with h5py.File(path, "r") as handle:
        group = handle["posterior"]
        table = {}
        for key in group.keys():
            item = group[key]
            if hasattr(item, "dtype") and np.issubdtype(item.dtype, np.number):
                table[key] = np.asarray(item[()], dtype=np.float64)
        keys = [_text(k) for k in np.atleast_1d(handle["search_parameter_keys"][()])]
    return table, keys


def read_bilby(path: Path, column: str | int | None = None) -> Chains:
    table, keys = _from_hdf5(path) if path.suffix in (".h5", ".hdf5") else _from_json(path)
    missing = [k for k in ("log_likelihood", "log_prior") if k not in table]
    if column is None and missing:
        raise ValueError(
            f"{str(path)!r}: the bilby posterior has no {' or '.join(missing)} column; "
            f"columns: {', '.join(table)}"
        )
    if column is not None and column not in table:
        raise ValueError(f"{str(path)!r}: no column {column!r}; columns: {', '.join(table)}")
    ln_post = table[column] if column is not None else table["log_likelihood"] + table["log_prior"]
    keys = [k for k in keys if k in table]
    if not keys:
        raise ValueError(f"{str(path)!r}: none of the search parameters is in the posterior")
    samples = np.stack([table[k] for k in keys], axis=-1)
    return from_arrays(samples, ln_post, keys, str(path), format="bilby")
