r"""Spectral templates of the SGWB sources, written in log space for batched torch evaluation.

Every function takes tensors that broadcast against each other (parameters (B, 1), frequencies
(N,) in Hz) and returns ln h_c^2 (astrophysical power laws) or ln Omega_GW h^2 (cosmological
sources), shape (B, N). Parameters are base-10 logarithms where their names say so. The
cosmological templates follow the model files of PTArcade used in the NANOGrav 15-year
new-physics search (``pt_sound``, ``dw_sm``, ``sigw_gauss``) with the constants
and degrees of freedom of :mod:`flows.pta.cosmology`.

References:
    G. Agazie et al. (NANOGrav), "The NANOGrav 15 yr Data Set: Evidence for a Gravitational-
    Wave Background", ApJL 951 L8 (2023), arXiv:2306.16213 (power law, eq. (2)).
    L. Sampson, N. J. Cornish, S. T. McWilliams, arXiv:1503.02662 (environmental turnover,
    eq. (8)).
    A. Afzal et al. (NANOGrav), "The NANOGrav 15 yr Data Set: Search for Signals from New
    Physics", ApJL 951 L11 (2023), arXiv:2306.16219 (phase transitions, domain walls,
    scalar-induced GWs; the broken power law S(x; a, b, c)).
    A. Mitridate et al., "PTArcade", arXiv:2306.16377 (the model files followed here).
    C. Caprini et al., arXiv:1512.06239 and arXiv:1910.13125 (sound-wave source);
    H.-K. Guo, K. Sinha, D. Vagie, G. White, arXiv:2007.08537 (sound-wave lifetime suppression).
    K. Saikawa, "A review of gravitational waves from cosmic domain walls", arXiv:1703.02576.
    S. Pi, M. Sasaki, arXiv:2005.12306; K. Kohri, T. Terada, arXiv:1804.08577 (SIGW).
"""

from __future__ import annotations

import math

import torch

from .cosmology import (
    G_RHO_0,
    G_S_0,
    G_S_EQ,
    GEV_TO_HZ,
    H100_GEV,
    M_PL_GEV,
    OMEGA_R_H2,
    T0_GEV,
    g_rho,
    g_rho_at_frequency,
    g_s,
    g_s_at_frequency,
)

__all__ = [
    "F_YR",
    "broken_power_law",
    "domain_walls",
    "sound_waves",
    "powerlaw",
    "sigw_gauss",
    "turnover",
]

F_YR = 1.0 / (365.25 * 86400.0)  # Hz
LN10 = math.log(10.0)
Tensor = torch.Tensor
Number = Tensor | float


def powerlaw(log10_a: Tensor, gamma: Tensor, f: Tensor) -> Tensor:
    """ln h_c^2 of h_c = A (f / f_yr)^((3 - gamma) / 2) (Agazie et al. 2023, eq. (2))."""
    return 2 * LN10 * log10_a + (3 - gamma) * torch.log(f / F_YR)


def turnover(log10_a: Tensor, log10_f_bend: Tensor, kappa: Tensor, f: Tensor) -> Tensor:
    """ln h_c^2 = ln[A^2 (f/f_yr)^(-4/3) / (1 + (f_bend/f)^kappa)]: gamma = 13/3 bent by the
    binaries' environment below f_bend (Sampson, Cornish & McWilliams 2015, eq. (8))."""
    base = powerlaw(log10_a, torch.full_like(log10_a, 13 / 3), f)
    return base - torch.nn.functional.softplus(kappa * (LN10 * log10_f_bend - torch.log(f)))


def _as_tensor(value: Number, like: Tensor) -> Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def broken_power_law(ln_x: Tensor, a: Number, b: Number, c: Number) -> Tensor:
    """ln S(x) with S(x) = (a + b)^c / (b x^(-a/c) + a x^(b/c))^c (Afzal et al. 2023).

    S(1) = 1; S ~ x^a below the peak and x^(-b) above it; c sets the width of the peak.
    """
    a, b, c = (_as_tensor(v, ln_x) for v in (a, b, c))
    below = torch.log(b) - (a / c) * ln_x
    above = torch.log(a) + (b / c) * ln_x
    return c * torch.log(a + b) - c * torch.logaddexp(below, above)


def ln_shape_integral(a: Number, b: Number, c: Number, like: Tensor) -> Tensor:
    """ln N, N = int S(x) dln x = (b/a)^(a/n) (n c/b)^c Gamma(a/n) Gamma(b/n) / (n Gamma(c)),
    n = (a + b)/c. PTArcade's phase-transition files multiply the spectrum by N."""
    a, b, c = (_as_tensor(v, like) for v in (a, b, c))
    n = (a + b) / c
    return (
        (a / n) * torch.log(b / a) + c * torch.log(n * c / b) + torch.lgamma(a / n)
        + torch.lgamma(b / n) - torch.log(n) - torch.lgamma(c)
    )


def _ln_dilution(g_star: Tensor, g_s_star: Tensor) -> Tensor:
    """ln of pi^2/90 g* (g_s,eq/g_s*)^(4/3) T_0^4 / (M_pl H_100)^2: the redshift of an energy
    density fraction produced at T* in radiation domination, in units of h^-2."""
    return (
        math.log(math.pi**2 / 90) + torch.log(g_star) + (4 / 3) * torch.log(G_S_EQ / g_s_star)
        + 4 * math.log(T0_GEV) - 2 * math.log(M_PL_GEV * H100_GEV)
    )


def _ln_redshifted_hubble(log10_t_star: Tensor, g_star: Tensor, g_s_star: Tensor) -> Tensor:
    """ln of (a*/a_0) H* in Hz = (g_s,eq/g_s*)^(1/3) sqrt(pi^2 g*/90) T_0 T*/M_pl: the Hubble
    rate at T* (radiation domination) redshifted to today."""
    return (
        (1 / 3) * torch.log(G_S_EQ / g_s_star) + 0.5 * torch.log(math.pi**2 * g_star / 90)
        + math.log(T0_GEV / M_PL_GEV * GEV_TO_HZ) + LN10 * log10_t_star
    )


def sound_waves(
    log10_alpha: Tensor,
    log10_t_star: Tensor,
    log10_h_r: Tensor,
    a: Number,
    b: Number,
    c: Number,
    f: Tensor,
) -> Tensor:
    """ln Omega_GW h^2 of sound waves after a first-order phase transition (PTArcade
    ``pt_sound``, bubble walls at v_w = 1):

        Omega h^2 = N(a,b,c) D(T*) Upsilon Delta (H*/beta) (kappa alpha/(1 + alpha))^2 S(f/f_0),

    H*/beta = H*R* (8 pi)^(-1/3), Delta = 3 * 0.012 (8 pi)^(1/3), efficiency
    kappa = alpha / (0.73 + 0.083 sqrt(alpha) + alpha), lifetime suppression
    Upsilon = 1 - (1 + 2 tau H*)^(-1/2) with tau H* = H*R* / sqrt(3/4 kappa alpha/(1 + alpha)),
    D the dilution of :func:`_ln_dilution`, f_0 = 0.54 / (H*/beta) x the Hubble rate at T*
    redshifted to today, N = :func:`ln_shape_integral` (multiplied, as in PTArcade).
    """
    alpha = 10**log10_alpha
    t_star = 10**log10_t_star
    h_r = 10**log10_h_r
    ln_h_beta = LN10 * log10_h_r - math.log(8 * math.pi) / 3
    g_star, g_s_star = g_rho(t_star), g_s(t_star)
    kappa = alpha / (0.73 + 0.083 * torch.sqrt(alpha) + alpha)
    k_frac = kappa * alpha / (1 + alpha)
    tau_h = h_r / torch.sqrt(0.75 * k_frac)
    ln_suppression = torch.log(1 - (1 + 2 * tau_h) ** -0.5)
    ln_f0 = _ln_redshifted_hubble(log10_t_star, g_star, g_s_star) + math.log(0.54) - ln_h_beta
    ln_s = broken_power_law(torch.log(f) - ln_f0, a, b, c)
    return (
        ln_shape_integral(a, b, c, ln_s) + _ln_dilution(g_star, g_s_star) + ln_suppression
        + math.log(3 * 0.012 * (8 * math.pi) ** (1 / 3)) + ln_h_beta + 2 * torch.log(k_frac)
        + ln_s
    )


def domain_walls(
    log10_alpha: Tensor, log10_t_star: Tensor, b: Number, c: Number, f: Tensor
) -> Tensor:
    """ln Omega_GW h^2 of annihilating domain walls decaying into Standard-Model particles
    (PTArcade ``dw_sm``; Saikawa 2017):

        Omega h^2 = eps pi/960 alpha*^2 g* (g_s,eq/g_s*)^(4/3) T_0^4 / (M_pl H_100)^2
                    x S(f/f_0; 3, b, c),

    eps = 0.7, f_0 the Hubble rate at T* redshifted to today (no shape normalisation N here,
    as in PTArcade).
    """
    t_star = 10**log10_t_star
    g_star, g_s_star = g_rho(t_star), g_s(t_star)
    ln_f0 = _ln_redshifted_hubble(log10_t_star, g_star, g_s_star)
    ln_amp = (
        math.log(0.7 * math.pi / 960) + 2 * LN10 * log10_alpha + torch.log(g_star)
        + (4 / 3) * torch.log(G_S_EQ / g_s_star) + 4 * math.log(T0_GEV)
        - 2 * math.log(M_PL_GEV * H100_GEV)
    )
    return ln_amp + broken_power_law(torch.log(f) - ln_f0, 3.0, b, c)


def sigw_gauss(log10_a: Tensor, width: Tensor, log10_f_peak: Tensor, f: Tensor) -> Tensor:
    """ln Omega_GW h^2 of GWs induced by a log-normal peak of the curvature power spectrum,
    P_zeta(k) = A / (sqrt(2 pi) Delta) exp(-ln^2(k/k*) / (2 Delta^2)) (PTArcade ``sigw_gauss``):

        Omega h^2 = Omega_r h^2 (g_rho(f)/g_rho,0) (g_s,0/g_s(f))^(4/3) A^2 Omega_ind(f/f*, Delta),

    g at the horizon entry of f; Omega_ind from :mod:`flows.pta.sigw` (computed here, not
    PTArcade's table: the two agree to ~0.05 dex, see docs/pta.md).
    """
    from .sigw import ln_omega_sigw_gauss

    ln_dof = torch.log(g_rho_at_frequency(f) / G_RHO_0) + (4 / 3) * torch.log(
        G_S_0 / g_s_at_frequency(f)
    )
    ln_x = torch.log(f) - LN10 * log10_f_peak
    return (
        math.log(OMEGA_R_H2) + ln_dof + 2 * LN10 * log10_a + ln_omega_sigw_gauss(ln_x, width)
    )
