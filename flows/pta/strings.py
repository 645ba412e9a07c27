r"""GW spectra of stable cosmic-string networks: PTArcade's tabulated spectra and an analytic one.

Tabulated (``stable_c``, ``stable_k``, ``stable_n``): log10 Omega_GW h^2 on a regular grid of
(log10 G mu, log10 f/Hz), steps 0.1 and 0.05, from PTArcade's model data (files ``cusps.h5``,
``kinks.h5`` and ``bos.h5`` of its repository, the spectra behind NANOGrav's STABLE-C,
STABLE-K and STABLE-N models), cut to log10 G mu in [-14, -5.5] and log10 f in [-10, -5.95]
(``resources/ptarcade/stable_*.npz``, see PROVENANCE.md). They are the Blanco-Pillado-Olum-
Shlaer loop distribution in radiation and matter domination, each loop radiating
P_n = Gamma n^(-q) / zeta(q) with Gamma = 50 (q = 4/3 cusps, 5/3 kinks) or the numerically
computed loop spectrum (STABLE-N):

    Omega_GW(f) = 8 pi (G mu)^2 f / (3 H_0^2) sum_n P_n C_n(f),
    C_n(f) = 2n / f^2 int dz n_loops(2n / ((1+z) f), t(z)) / (H(z) (1+z)^6)

(Afzal et al. 2023). As in PTArcade, the table is interpolated linearly in both
coordinates and exponentiated. The tests recompute STABLE-C and STABLE-K from these formulas.

Analytic (``analytic``): a smooth plateau + f^(3/2) template, NOT a PTArcade model,

    Omega h^2 = Omega_plat h^2 x^(3/2) / (1 + x^(3/2)),   x = f / f_p,
    Omega_plat h^2 = 8.04 Omega_r h^2 sqrt(G mu / Gamma),   f_p = 2 / (alpha Gamma G mu t_0),

(plateau of Blanco-Pillado & Olum 2017, eq. (6); alpha = 0.1, Gamma = 50). It reproduces the
radiation-era plateau but not the matter-era shape that sets the PTA band for G mu < 1e-9.

References:
    J. J. Blanco-Pillado, K. D. Olum, B. Shlaer, arXiv:1309.6637 (loop distribution);
    J. J. Blanco-Pillado, K. D. Olum, arXiv:1709.02693 (loop spectrum, plateau).
    P. Auclair et al., "Probing the gravitational wave background from cosmic strings with
    LISA", arXiv:1909.00819 (the C_n formalism).
    A. Afzal et al. (NANOGrav), arXiv:2306.16219; A. Mitridate et al., PTArcade,
    arXiv:2306.16377.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .cosmology import OMEGA_R_H2

__all__ = ["STRING_TABLES", "analytic_strings", "tabulated_strings"]

LN10 = math.log(10.0)
_RESOURCES = Path(__file__).resolve().parent / "resources" / "ptarcade"
STRING_TABLES = ("stable_c", "stable_k", "stable_n")


@lru_cache(maxsize=8)
def _table(name: str) -> dict[str, np.ndarray | float]:
    with np.load(_RESOURCES / f"{name}.npz", allow_pickle=False) as table:
        out = {key: np.asarray(table[key], dtype=np.float64) for key in table.files}
    return {k: (float(v) if v.ndim == 0 else v) for k, v in out.items()}


@lru_cache(maxsize=16)
def _grid(name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(_table(name)["log10_omega_h2"], dtype=dtype, device=device)


def _fractional_index(
    x: torch.Tensor, start: float, step: float, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cell index, position inside the cell, and a mask of x outside the table's cells."""
    pos = (x - start) / step
    # a value on the last node would need the (absent) next one: the usable range ends a step
    # earlier, at start + (size - 2) * step, reached as the end of the second-to-last cell
    outside = ~((pos >= 0) & (pos <= size - 2 + 1e-9))
    index = pos.clamp(0, size - 2).floor().long()
    return index, pos.clamp(0, size - 1) - index, outside


def tabulated_strings(name: str, log10_gmu: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """ln Omega_GW h^2 of the stable-string table ``name`` (see STRING_TABLES), bilinear in
    (log10 G mu, log10 f) like PTArcade's interpolator; (B, 1) and (N,) -> (B, N).

    G mu outside the table gives NaN (the priors stay inside it); a frequency outside it is
    an error.
    """
    table = _table(name)
    grid = _grid(name, log10_gmu.dtype, log10_gmu.device)
    n_g, n_f = grid.shape
    ig, tg, g_out = _fractional_index(
        log10_gmu.reshape(-1, 1), table["log10_gmu_start"], table["log10_gmu_step"], n_g
    )
    jf, tf, f_out = _fractional_index(
        torch.log10(f).reshape(1, -1), table["log10_f_start"], table["log10_f_step"], n_f
    )
    if bool(f_out.any()):
        low = table["log10_f_start"]
        high = low + (n_f - 2) * table["log10_f_step"]
        bad = float(f.reshape(1, -1)[f_out][0])
        raise ValueError(
            f"cosmic strings ({name}): frequency {bad:.4g} Hz lies outside the bundled table "
            f"(log10 f/Hz in [{low:.2f}, {high:.2f}])"
        )
    value = (
        (1 - tg) * (1 - tf) * grid[ig, jf] + (1 - tg) * tf * grid[ig, jf + 1]
        + tg * (1 - tf) * grid[ig + 1, jf] + tg * tf * grid[ig + 1, jf + 1]
    )
    return torch.where(g_out, torch.full_like(value, math.nan), LN10 * value)


_STRING_GAMMA = 50.0
_LOOP_ALPHA = 0.1
_T0_SECONDS = 4.35e17


def analytic_strings(log10_gmu: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """ln Omega_GW h^2 of the analytic plateau + f^(3/2) template (module docstring)."""
    ln_plat = math.log(8.04 * OMEGA_R_H2) + 0.5 * (LN10 * log10_gmu - math.log(_STRING_GAMMA))
    ln_fp = (
        math.log(2 / (_LOOP_ALPHA * _STRING_GAMMA * _T0_SECONDS)) - LN10 * log10_gmu
    )
    ln_x = torch.log(f) - ln_fp
    return ln_plat + 1.5 * ln_x - torch.nn.functional.softplus(1.5 * ln_x)
