r"""Scalar-induced gravitational waves from a log-normal curvature peak, tabulated once.

For P_zeta(k) = A / (sqrt(2 pi) Delta) exp(-ln^2(k/k*) / (2 Delta^2)) the radiation-era
induced spectrum is (Kohri & Terada 2018, eqs. (29)-(30))

    Omega(k) = 1/12 int_0^inf dv int_{|1-v|}^{1+v} du [(4 v^2 - (1 + v^2 - u^2)^2) / (4 u v)]^2
               Ibar^2(u, v) P_zeta(k u) P_zeta(k v),
    Ibar^2 = [3 (u^2 + v^2 - 3) / (4 u^3 v^3)]^2 { [-4 u v + (u^2 + v^2 - 3)
             ln |(3 - (u + v)^2) / (3 - (u - v)^2)|]^2
             + pi^2 (u^2 + v^2 - 3)^2 Theta(u + v - sqrt 3) }

(eq. (39) there, the late-time oscillation average). For a delta peak this reduces to their
closed form 3 A^2/64 ((4 - x^2)/4)^2 x^2 (3 x^2 - 2)^2 {...} (eq. (40)), a check in the tests.

Since P_zeta(k u) = A N(ln u; -ln x, Delta^2) with x = k/k*, the double integral is an
expectation over two independent normals in (ln u, ln v); we evaluate it with a midpoint rule on
+-6 standard deviations (the triangle |1 - v| <= u <= 1 + v as an indicator) on a grid of
(ln x, Delta) and interpolate bilinearly. Omega is returned for A = 1 (it scales as A^2).

References:
    K. Kohri, T. Terada, "Semianalytic calculation of gravitational wave spectrum nonlinearly
    induced from primordial curvature perturbations", arXiv:1804.08577.
    S. Pi, M. Sasaki, "Gravitational waves induced by scalar perturbations with a lognormal
    peak", arXiv:2005.12306.
    A. Afzal et al. (NANOGrav), arXiv:2306.17219, Sec. 4.4.
"""

from __future__ import annotations

import hashlib
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

__all__ = ["induced_omega", "ln_omega_sigw_gauss", "LN_X_RANGE", "WIDTH_RANGE"]

LN_X_RANGE = (-12.0, 8.0)
WIDTH_RANGE = (0.1, 3.0)
_N_LN_X = 121
_N_WIDTH = 30
_N_Z = 160
_Z_MAX = 6.0
_LN_FLOOR = -700.0  # ln Omega where the integral vanishes (k > 2 k* beyond the peak's tail)


def _kernel(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """[(4v^2-(1+v^2-u^2)^2)/(4uv)]^2 Ibar^2(u, v), zero outside the triangle."""
    inside = (u >= np.abs(1 - v)) & (u <= 1 + v)
    s = u**2 + v**2 - 3
    with np.errstate(divide="ignore", invalid="ignore"):
        ln_term = np.log(np.abs((3 - (u + v) ** 2) / (3 - (u - v) ** 2)))
        ln_term = np.where(np.isfinite(ln_term), ln_term, 0.0)
        geom = ((4 * v**2 - (1 + v**2 - u**2) ** 2) / (4 * u * v)) ** 2
        pref = (3 * s / (4 * u**3 * v**3)) ** 2
        bracket = (-4 * u * v + s * ln_term) ** 2 + np.pi**2 * s**2 * (u + v > np.sqrt(3))
        out = geom * pref * bracket
    return np.where(inside, out, 0.0)


def induced_omega(ln_x: np.ndarray, width: float, n_z: int = _N_Z) -> np.ndarray:
    """Omega_ind(k) / A^2 at x = k/k* = exp(ln_x) for a log-normal peak of width ``width``."""
    ln_x = np.atleast_1d(np.asarray(ln_x, dtype=np.float64))
    edges = np.linspace(-_Z_MAX, _Z_MAX, n_z + 1)
    z = 0.5 * (edges[1:] + edges[:-1])
    w = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi) * (edges[1] - edges[0])
    weights = w[:, None] * w[None, :]
    out = np.empty_like(ln_x)
    for i, lx in enumerate(ln_x):
        ln_u = -lx + width * z
        u = np.exp(ln_u)[:, None]
        v = np.exp(ln_u)[None, :]
        out[i] = np.sum(weights * u * v * _kernel(u, v)) / 12.0
    return out


def _cache_file() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "normkit"
    key = f"{LN_X_RANGE}-{WIDTH_RANGE}-{_N_LN_X}-{_N_WIDTH}-{_N_Z}-{_Z_MAX}-v1"
    return root / f"sigw_gauss_{hashlib.sha1(key.encode()).hexdigest()[:12]}.npy"


def _ln_table_numpy() -> np.ndarray:
    """(N_LN_X, N_WIDTH) ln Omega table; computed once (~5 s) and cached on disk when the
    user cache directory is writable (it is a pure function of the constants above)."""
    path = _cache_file()
    try:
        table = np.load(path)
        if table.shape == (_N_LN_X, _N_WIDTH):
            return table
    except (OSError, ValueError):
        pass
    ln_x = np.linspace(*LN_X_RANGE, _N_LN_X)
    widths = np.linspace(*WIDTH_RANGE, _N_WIDTH)
    values = np.stack([induced_omega(ln_x, float(wd)) for wd in widths], axis=1)
    with np.errstate(divide="ignore"):
        ln_values = np.maximum(np.log(values), _LN_FLOOR)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, ln_values)
        os.replace(tmp, path)
    except OSError:
        pass
    return ln_values


@lru_cache(maxsize=2)
def _table(dtype_name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ln_x = np.linspace(*LN_X_RANGE, _N_LN_X)
    widths = np.linspace(*WIDTH_RANGE, _N_WIDTH)
    ln_values = _ln_table_numpy()
    dtype = getattr(torch, dtype_name)
    return (
        torch.as_tensor(ln_x, dtype=dtype),
        torch.as_tensor(widths, dtype=dtype),
        torch.as_tensor(ln_values, dtype=dtype),
    )


def ln_omega_sigw_gauss(ln_x: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """ln Omega_ind(x, Delta) for A = 1, bilinear in (ln x, Delta) on the cached table.

    ``ln_x`` and ``width`` broadcast against each other (e.g. (B, N) and (B, 1)). Below the
    table's ln x range the causal IR tail Omega ∝ x^3 is extrapolated; above it Omega is 0
    (returned as a very negative log). Widths are clamped to WIDTH_RANGE.
    """
    grid_x, grid_w, table = _table(str(ln_x.dtype).removeprefix("torch."))
    ln_x, width = torch.broadcast_tensors(ln_x, width)
    nx, nw = grid_x.shape[0], grid_w.shape[0]
    dx = float(grid_x[1] - grid_x[0])
    dw = float(grid_w[1] - grid_w[0])
    xc = ln_x.clamp(float(grid_x[0]), float(grid_x[-1]))
    wc = width.clamp(float(grid_w[0]), float(grid_w[-1]))
    fx = (xc - float(grid_x[0])) / dx
    fw = (wc - float(grid_w[0])) / dw
    ix = fx.floor().long().clamp(0, nx - 2)
    iw = fw.floor().long().clamp(0, nw - 2)
    tx = fx - ix
    tw = fw - iw
    v00 = table[ix, iw]
    v10 = table[ix + 1, iw]
    v01 = table[ix, iw + 1]
    v11 = table[ix + 1, iw + 1]
    val = (1 - tx) * (1 - tw) * v00 + tx * (1 - tw) * v10 + (1 - tx) * tw * v01 + tx * tw * v11
    below = ln_x < float(grid_x[0])
    val = torch.where(below, val + 3 * (ln_x - float(grid_x[0])), val)
    above = ln_x > float(grid_x[-1])
    return torch.where(above, torch.full_like(val, _LN_FLOOR), val)
