r"""Cosmological constants and Standard-Model degrees of freedom, in PTArcade's conventions.

The new-physics spectra of the NANOGrav 15-year search are written with a handful of constants
(Planck mass, CMB temperature, matter-radiation equality, Planck-2018 densities) and the
tabulated relativistic degrees of freedom g_rho(T) and g_s(T) of Saikawa & Shirai. We use the
same values so that a spectrum here equals PTArcade's to rounding:

* g_rho, g_s: the Saikawa-Shirai table as shipped by PTArcade (``g_star.dat``, stored here as
  ``resources/ptarcade/g_star.npz``), interpolated LINEARLY IN T (or in f for the frequency
  column) and clamped at the table's ends, as ``numpy.interp`` does in PTArcade. Today and at
  matter-radiation equality (T below the table) this gives g_rho,0 = 3.383, g_s,0 = 3.931.
* M_pl = (8 pi G)^(-1/2) with G = 6.70883e-39 GeV^-2, T_0 = 2.7255 K, z_eq = 3402,
  Omega_r = 9.2188e-5 with h = 0.674 (Planck 2018), 1 GeV = 1/hbar = 1.51927e24 Hz.

The energy density of a spectrum converts to timing-residual power as in PTArcade's
``omega2cross`` (ceffyl mode):

    h_c(f)^2 = 3 H_100^2 Omega_GW(f) h^2 / (2 pi^2 f^2),   rho_k^2 = h_c^2 / (12 pi^2 f_k^3 T).

References:
    K. Saikawa, S. Shirai, "Precise WIMP dark matter abundance and Standard Model
    thermodynamics", JCAP 08 (2020) 011, arXiv:2005.03544 (the g_rho, g_s table).
    A. Mitridate et al., "PTArcade", arXiv:2306.16377 (``ptarcade.models_utils``).
    Planck Collaboration, "Planck 2018 results. VI", arXiv:1807.06209 (h, Omega_r).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "GEV_TO_HZ",
    "G_RHO_0",
    "G_S_0",
    "H100",
    "M_PL_GEV",
    "OMEGA_R_H2",
    "T0_GEV",
    "g_rho",
    "g_rho_at_frequency",
    "g_s",
    "g_s_at_frequency",
]

HBAR_GEV_S = 6.582119569e-25  # GeV s
GEV_TO_HZ = 1.0 / HBAR_GEV_S
G_NEWTON_GEV = 6.70883e-39  # GeV^-2 (hbar = c = 1)
M_PL_GEV = (8.0 * math.pi * G_NEWTON_GEV) ** -0.5  # reduced Planck mass
T0_GEV = 2.7255 * 8.617333262e-14  # CMB temperature today
Z_EQ = 3402
T_EQ_GEV = T0_GEV * (1 + Z_EQ)
H100 = 1.0e5 / 3.0856775814913673e22  # 100 km/s/Mpc in 1/s
H100_GEV = H100 * HBAR_GEV_S
LITTLE_H = 0.674
OMEGA_R_H2 = 9.2188e-5 * LITTLE_H**2

_TABLE = Path(__file__).resolve().parent / "resources" / "ptarcade" / "g_star.npz"


@lru_cache(maxsize=1)
def _table() -> dict[str, np.ndarray]:
    with np.load(_TABLE, allow_pickle=False) as table:
        return {key: np.asarray(table[key], dtype=np.float64) for key in table.files}


def _numpy_interp(x: float, column: str, value: str) -> float:
    table = _table()
    return float(np.interp(x, table[column], table[value]))


# today and at matter-radiation equality: both below the table, so its first row
G_RHO_0 = _numpy_interp(T0_GEV, "temperature_gev", "g_rho")
G_S_0 = _numpy_interp(T0_GEV, "temperature_gev", "g_s")
G_S_EQ = _numpy_interp(T_EQ_GEV, "temperature_gev", "g_s")


@lru_cache(maxsize=16)
def _columns(
    column: str, value: str, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    table = _table()
    return (
        torch.as_tensor(table[column], dtype=dtype, device=device),
        torch.as_tensor(table[value], dtype=dtype, device=device),
    )


def _interp(x: torch.Tensor, column: str, value: str) -> torch.Tensor:
    """Linear interpolation of ``value`` against ``column``, clamped at the ends (np.interp)."""
    xs, ys = _columns(column, value, x.dtype, x.device)
    xc = x.clamp(float(xs[0]), float(xs[-1]))
    idx = torch.searchsorted(xs, xc.contiguous(), right=True).clamp(1, len(xs) - 1)
    x0, x1, y0, y1 = xs[idx - 1], xs[idx], ys[idx - 1], ys[idx]
    return y0 + (y1 - y0) * (xc - x0) / (x1 - x0)


def g_rho(t_gev: torch.Tensor) -> torch.Tensor:
    """Energy degrees of freedom g_rho at temperature T (GeV)."""
    return _interp(t_gev, "temperature_gev", "g_rho")


def g_s(t_gev: torch.Tensor) -> torch.Tensor:
    """Entropy degrees of freedom g_s at temperature T (GeV)."""
    return _interp(t_gev, "temperature_gev", "g_s")


def g_rho_at_frequency(f_hz: torch.Tensor) -> torch.Tensor:
    """g_rho when a mode of today's frequency f (Hz) entered the horizon."""
    return _interp(f_hz, "frequency_hz", "g_rho")


def g_s_at_frequency(f_hz: torch.Tensor) -> torch.Tensor:
    """g_s when a mode of today's frequency f (Hz) entered the horizon."""
    return _interp(f_hz, "frequency_hz", "g_s")
