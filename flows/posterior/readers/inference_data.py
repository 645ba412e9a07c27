r"""Chains from ArviZ ``InferenceData`` files, netCDF or zarr (Kumar et al. 2019, JOSS 4(33)
1143): the ``posterior`` group's variables (vector variables split into ``name[i]``) are the
parameters, its ``chain`` dimension the chains.

ln posterior, first found of: the variable named by ``column`` (in ``sample_stats``,
``log_likelihood`` or ``log_prior``); the sums over every variable of the ``log_likelihood``
and ``log_prior`` groups; ``sample_stats.lp``. Note that samplers report ``lp`` in their
unconstrained parameterisation (Stan's ``lp__``, PyMC's model logp); it is the ln posterior
of the stored samples only for unconstrained parameters. The file is opened as the xarray
DataTree that ArviZ writes (``InferenceData.to_netcdf``, or ``to_datatree().to_zarr`` with
zarr 3), so ArviZ 0.x and 1.x files read alike. Needs xarray with h5netcdf or zarr
(``pip install 'normkit[chains]'``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flows.posterior.readers.common import Chains, from_arrays, optional_import

__all__ = ["read_inference_data"]


def _group(tree, name: str):  # noqa: ANN001, ANN202 - an xarray DataTree
    return tree[name].to_dataset() if name in tree.children else None


def _per_draw(variable) -> np.ndarray:  # noqa: ANN001
    """(chain, draw, ...) -> (chain, draw, k) float64."""
    values = np.asarray(variable.transpose("chain", "draw", ...).values, dtype=np.float64)
    return values.reshape(values.shape[0], values.shape[1], -1)


def _summed(group) -> np.ndarray | None:  # noqa: ANN001
    if group is None or not group.data_vars:
        return None
    return sum(_per_draw(group[v]).sum(-1) for v in group.data_vars)


def read_inference_data(path: Path, column: str | int | None = None) -> Chains:
    xarray = optional_import("xarray")
    zarr = path.is_dir() or path.suffix == ".zarr"
    optional_import("zarr" if zarr else "h5netcdf")
    try:
        data = xarray.open_datatree(str(path), engine="zarr" if zarr else "h5netcdf")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{str(path)!r} is not a readable ArviZ InferenceData: {err}") from None
    posterior = _group(data, "posterior")
    if posterior is None:
        raise ValueError(f"{str(path)!r} has no 'posterior' group")
    names, columns = [], []
    for name in posterior.data_vars:
        values = _per_draw(posterior[name])
        shape = posterior[name].shape[2:]
        labels = [name] if not shape else [f"{name}[{','.join(map(str, i))}]"
                                          for i in np.ndindex(*shape)]
        names.extend(labels)
        columns.append(values)
    samples = np.concatenate(columns, axis=-1)
    stats = _group(data, "sample_stats")
    log_like, log_prior = _group(data, "log_likelihood"), _group(data, "log_prior")
    if column is not None:
        holders = [g for g in (stats, log_like, log_prior) if g is not None and column in g]
        if not holders:
            raise ValueError(f"{str(path)!r}: no variable {column!r} in sample_stats, "
                             "log_likelihood or log_prior")
        ln_post = _per_draw(holders[0][column]).sum(-1)
    elif _summed(log_like) is not None and _summed(log_prior) is not None:
        ln_post = _summed(log_like) + _summed(log_prior)
    elif stats is not None and "lp" in stats:
        ln_post = _per_draw(stats["lp"])[..., 0]
    else:
        raise ValueError(
            f"{str(path)!r} has neither log_likelihood + log_prior groups nor sample_stats.lp: "
            "the ln posterior of the draws is needed"
        )
    return from_arrays(samples, ln_post, names, str(path), format="arviz")
