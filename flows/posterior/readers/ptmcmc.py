r"""Chains from a PTMCMCSampler / enterprise output folder (Ellis & van Haasteren,
doi:10.5281/zenodo.1037579): ``chain_1.txt`` (or ``chain_1.0.txt``, the T = 1 chain) with one
row per saved step: the parameters, then ln posterior, ln likelihood, the acceptance rate and
the parallel-tempering acceptance rate; the parameter names one per line in ``pars.txt``
(written by enterprise / enterprise_extensions) when present.

The folder holds one chain; the burn-in (enterprise's habit: the first 25%) is dropped by the
caller. ``column`` overrides the ln-posterior column (default: the one after the parameters).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flows.posterior.readers.arrays import column_index
from flows.posterior.readers.common import Chains, from_arrays

__all__ = ["CHAIN_FILES", "chain_file", "read_ptmcmc"]

CHAIN_FILES = ("chain_1.txt", "chain_1.0.txt")
TRAILING_COLUMNS = 4  # ln posterior, ln likelihood, acceptance rate, PT acceptance rate


def chain_file(folder: Path) -> Path | None:
    """The T = 1 chain file of a PTMCMC output folder, or None."""
    return next((folder / n for n in CHAIN_FILES if (folder / n).is_file()), None)


def read_ptmcmc(path: Path, column: str | int | None = None) -> Chains:
    folder = path if path.is_dir() else path.parent
    file = chain_file(folder) if path.is_dir() else path
    if file is None:
        raise ValueError(
            f"{str(path)!r} is a folder without a PTMCMC chain ({' or '.join(CHAIN_FILES)})"
        )
    try:
        table = np.loadtxt(file, ndmin=2)
    except ValueError as err:
        raise ValueError(f"{str(file)!r}: not a numeric PTMCMC chain ({err})") from None
    ncol = table.shape[1]
    pars = folder / "pars.txt"
    names = pars.read_text().split() if pars.is_file() else None
    if names is not None and len(names) + TRAILING_COLUMNS != ncol:
        raise ValueError(
            f"{str(pars)!r} names {len(names)} parameters but {str(file)!r} has {ncol} columns "
            f"(expected {len(names)} + {TRAILING_COLUMNS})"
        )
    if isinstance(column, str):
        raise ValueError("PTMCMC chains have no header: give --column as an integer index")
    ndim = ncol - TRAILING_COLUMNS if column is None else column_index(column, ncol, file)
    if ndim < 1:
        raise ValueError(f"{str(file)!r} has {ncol} columns: no parameter columns")
    return from_arrays(table[:, :ndim], table[:, ndim], names, str(path), format="ptmcmc")
