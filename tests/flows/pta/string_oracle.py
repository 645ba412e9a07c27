"""An independent recomputation of the stable cosmic-string spectrum, the oracle of the tests.

Omega_GW(f) h^2 = 8 pi (G mu)^2 f / (3 H_100^2) sum_n P_n C_n(f),
C_n(f) = 2n / f^2 int dz n(2n / ((1+z) f), t(z)) / (H(z) (1+z)^6),   P_n = Gamma n^-q / zeta(q),

with the Blanco-Pillado-Olum-Shlaer loop number density: radiation-era loops
0.18 (2 H_0 sqrt(Omega_r))^(3/2) (1+z)^3 / (l + Gamma G mu t)^(5/2) (diluted as a^-3 ever after,
cut at l <= 0.1 t, or at 0.1 t_eq less their decay after equality), matter-era loops
(0.27 - 0.45 (l/t)^0.31) / (t^2 (l + Gamma G mu t)^2) for l <= 0.18 t, and H(z) of flat LCDM
(Planck 2018) with the degrees of freedom of the bundled Saikawa-Shirai table. C_n(f) =
C_1(f/n)/n, so C_1 is computed once on a frequency grid.

References:
    J. J. Blanco-Pillado, K. D. Olum, B. Shlaer, arXiv:1309.6637;
    P. Auclair et al., arXiv:1909.00819 (the C_n formalism and the loop densities);
    A. Afzal et al. (NANOGrav), arXiv:2306.16219 (the stable-string models).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.integrate import cumulative_trapezoid
from scipy.special import zeta

H100 = 1e5 / 3.0856775814913673e22
LITTLE_H = 0.674
H0 = LITTLE_H * H100
OMEGA_L, OMEGA_M, OMEGA_R = 0.6847, 0.3153, 9.2188e-5
T0 = 2.7255 * 8.617333262e-14
Z_EQ = 3402
GAMMA = 50.0


def string_omega_h2(
    freqs: np.ndarray, gmu: float, q: float, g_table: tuple, n_max: int = 20000,
    n_z: int = 4000,
) -> np.ndarray:
    """Omega_GW h^2 at ``freqs`` (Hz) for loops radiating P_n ~ n^-q (4/3 cusps, 5/3 kinks)."""
    t_col, grho, gs = g_table
    lnz = np.linspace(math.log(1e-6), math.log(1e16), n_z)
    z = np.exp(lnz)
    temp = T0 * (1 + z)
    dof = (np.interp(temp, t_col, grho) / grho[0]) * (gs[0] / np.interp(temp, t_col, gs)) ** (4 / 3)
    hub = H0 * np.sqrt(OMEGA_L + OMEGA_M * (1 + z) ** 3 + OMEGA_R * dof * (1 + z) ** 4)
    # cosmic time t(z) = int_z^inf dz' / ((1 + z') H), radiation beyond the grid
    dt = z / ((1 + z) * hub)
    t = 1 / (2 * hub[-1]) + np.abs(cumulative_trapezoid(dt[::-1], lnz[::-1], initial=0))[::-1]
    t_eq = np.interp(math.log(Z_EQ), lnz, t)
    decay = GAMMA * gmu * t
    radiation = 0.18 * (2 * H0 * math.sqrt(OMEGA_R)) ** 1.5 * (1 + z) ** 3

    def c1(f: np.ndarray) -> np.ndarray:
        size = 2 / ((1 + z[None]) * f[:, None])
        rad = radiation / (size + decay) ** 2.5
        n_r = rad * (size <= 0.1 * t) * (t < t_eq)
        n_rm = rad * (size <= 0.1 * t_eq - decay + GAMMA * gmu * t_eq) * (t >= t_eq)
        n_m = (np.clip(0.27 - 0.45 * (size / t) ** 0.31, 0, None) / (t**2 * (size + decay) ** 2)
               * (size <= 0.18 * t) * (t >= t_eq))
        integrand = (n_r + n_rm + n_m) / (hub * (1 + z) ** 6) * z
        return 2 / f**2 * np.trapezoid(integrand, lnz, axis=1)

    n = np.arange(1, n_max + 1)
    p_n = GAMMA / zeta(q) * n ** (-q)
    f_grid = np.logspace(np.log10(freqs.min() / n_max) - 0.3, np.log10(freqs.max()) + 0.3, 300)
    ln_c1 = np.log(np.maximum(c1(f_grid), 1e-300))
    out = []
    for f in freqs:
        c_n = np.exp(np.interp(np.log(f / n), np.log(f_grid), ln_c1)) / n
        out.append(8 * math.pi / (3 * H100**2) * gmu**2 * f * np.sum(c_n * p_n))
    return np.array(out)
