r"""Chains from an emcee HDF5 backend (``emcee.backends.HDFBackend``; Foreman-Mackey et al.
2013, arXiv:1202.3665): the walkers become the chains, ``log_prob`` is the ln posterior.

The file holds a group (``mcmc`` unless the user named it) with datasets ``chain``
(nsteps, nwalkers, ndim) and ``log_prob`` (nsteps, nwalkers) and an ``iteration`` attribute
counting the steps actually written. Needs h5py (``pip install 'normkit[chains]'``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flows.posterior.readers.common import Chains, from_arrays, optional_import

__all__ = ["is_emcee_backend", "read_emcee"]


def is_emcee_backend(handle) -> bool:  # noqa: ANN001 - an open h5py.File
    """True when some top-level group holds emcee's ``chain`` and ``log_prob`` datasets."""
    return _group_name(handle) is not None


def _group_name(handle) -> str | None:  # noqa: ANN001
    for name, item in handle.items():
        if hasattr(item, "keys") and {"chain", "log_prob"} <= set(item.keys()):
            return name
    return None


def read_emcee(path: Path, column: str | int | None = None) -> Chains:
    h5py = optional_import("h5py")
    with h5py.File(path, "r") as handle:
        name = _group_name(handle)
        if name is None:
            raise ValueError(
                f"{str(path)!r} is an HDF5 file without an emcee backend group (a group with "
                f"'chain' and 'log_prob'); top-level keys: {', '.join(handle.keys())}"
            )
        group = handle[name]
        steps = int(group.attrs.get("iteration", group["chain"].shape[0]))
        if steps < 1:
            raise ValueError(f"{str(path)!r}: the emcee backend holds no steps yet")
        chain = np.asarray(group["chain"][:steps], dtype=np.float64)
        log_prob = np.asarray(group["log_prob"][:steps], dtype=np.float64)
    return from_arrays(
        chain.transpose(1, 0, 2), log_prob.T, None, str(path), format="emcee"
    )
