r"""Registry of stochastic gravitational-wave background spectral models for PTA refits.

Every model maps a batch of parameters theta (B, D) to the timing-residual power per frequency
bin, returned as ``ln rho_k^2`` (B, N) with rho in seconds:

    rho_k^2 = h_c(f_k)^2 / (12 pi^2 f_k^3 T),                     T = 1 / f_1,
    h_c(f)^2 = 3 H_100^2 Omega_GW(f) h^2 / (2 pi^2 f^2),          H_100 = 100 km/s/Mpc,

(Afzal et al. 2023, eqs. (2)-(4); PTArcade's ``omega2cross``). Templates compute ln h_c^2 or
ln Omega_GW h^2 so that float32 never underflows; components of a "a+b" model add in rho^2
(log-add-exp). Model names: ``powerlaw``, ``smbhb``, ``smbhb_fixed``, ``turnover``,
``pt_sound``, ``sigw_gauss``, ``domain_walls``, ``cosmic_strings`` and every ``X+smbhb``.

References:
    A. Afzal et al. (NANOGrav), "The NANOGrav 15 yr Data Set: Search for Signals from New
    Physics", ApJL 951 L11 (2023), arXiv:2306.17219.
    A. Mitridate, D. Wright, R. von Eckardstein, T. Schroeder, J. Nay, K. Olum, K. Schmitz,
    T. Trickle, "PTArcade", arXiv:2306.16377 (model files and conventions).
    G. Agazie et al. (NANOGrav), "The NANOGrav 15 yr Data Set: Evidence for a Gravitational-
    Wave Background", ApJL 951 L8 (2023), arXiv:2306.16213 (power law, turnover).
    C. Caprini et al., "Science with LISA. II: gravitational waves from cosmological phase
    transitions", arXiv:1512.06239 (sound-wave shape).
    S. Pi, M. Sasaki, "Gravitational waves induced by scalar perturbations with a lognormal
    peak", arXiv:2005.12306; K. Kohri, T. Terada, arXiv:1804.08577 (SIGW kernel).
    J. J. Blanco-Pillado, K. D. Olum, arXiv:1709.02693 (string plateau amplitude).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import gamma as gamma_fn

from .priors import BivariateNormal, Prior, Uniform

__all__ = [
    "SpectralModel",
    "Template",
    "available_models",
    "build_model",
    "F_YR",
    "H100",
    "SMBHB_MEAN",
    "SMBHB_COV",
]

F_YR = 1.0 / (365.25 * 86400.0)  # Hz
H100 = 1.0e5 / 3.0856775814913673e22  # 100 km/s/Mpc in 1/s
GEV_TO_HZ = 1.0 / 6.582119569e-25  # 1 GeV / hbar in 1/s
T0_GEV = 2.7255 * 8.617333262e-14  # CMB temperature today in GeV
M_PL_GEV = 2.435e18  # reduced Planck mass in GeV
H100_GEV = H100 / GEV_TO_HZ  # 100 km/s/Mpc in GeV
OMEGA_R_H2 = 4.18e-5  # radiation density today (photons + massless neutrinos) times h^2
G_RHO_0 = 3.36
G_S_0 = 3.91

# NANOGrav 15-yr astrophysical SMBHB prior on (log10 A, gamma) (Afzal et al. 2023, eq. (12);
# PTArcade's ``smbhb`` prior).
SMBHB_MEAN = (-15.61492963, 4.70709637)
SMBHB_COV = ((0.27871359, -0.00263617), (-0.00263617, 0.12415383))

LN10 = math.log(10.0)

# Relativistic degrees of freedom of the Standard Model (energy g_rho and entropy g_s) at a few
# temperatures; a coarse piecewise-linear table in log10(T / GeV) standing in for PTArcade's
# tabulated g_rho / g_s (Saikawa & Shirai 2018). Good to ~10% away from the QCD crossover.
_G_TABLE_LOG10T = np.array([-5.0, -4.0, -3.3, -2.7, -1.7, -0.9, -0.6, 0.0, 1.0, 2.0, 4.0])
_G_RHO_TABLE = np.array([3.36, 3.6, 7.0, 10.75, 10.75, 17.25, 61.75, 75.75, 86.25, 106.75, 106.75])
_G_S_TABLE = np.array([3.91, 4.0, 7.3, 10.75, 10.75, 17.25, 61.75, 75.75, 86.25, 106.75, 106.75])


def _interp_table(log10_t: torch.Tensor, table: np.ndarray) -> torch.Tensor:
    xs = torch.as_tensor(_G_TABLE_LOG10T, dtype=log10_t.dtype, device=log10_t.device)
    ys = torch.as_tensor(table, dtype=log10_t.dtype, device=log10_t.device)
    x = log10_t.clamp(float(xs[0]), float(xs[-1]))
    idx = torch.searchsorted(xs, x.contiguous(), right=True).clamp(1, len(xs) - 1)
    x0, x1, y0, y1 = xs[idx - 1], xs[idx], ys[idx - 1], ys[idx]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def g_rho(log10_t_gev: torch.Tensor) -> torch.Tensor:
    """Energy degrees of freedom g_rho(T) (coarse Standard-Model table)."""
    return _interp_table(log10_t_gev, _G_RHO_TABLE)


def g_s(log10_t_gev: torch.Tensor) -> torch.Tensor:
    """Entropy degrees of freedom g_s(T) (coarse Standard-Model table)."""
    return _interp_table(log10_t_gev, _G_S_TABLE)


@dataclass(frozen=True)
class Template:
    """One spectral component.

    Attributes:
        name: registry name.
        blocks: prior blocks of its parameters (in order).
        kind: "hc2" (``fn`` returns ln h_c^2) or "omega" (``fn`` returns ln Omega_GW h^2).
        fn: ``fn(params, f)`` with params a dict name -> (B, 1) tensor and f (N,) in Hz,
            returning a (B, N) tensor.
        description: one line for tables and the README.
    """

    name: str
    blocks: tuple
    kind: str
    fn: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]
    description: str


class SpectralModel:
    """A sum of spectral templates with the product of their priors.

    Arguments:
        name: the registry name (e.g. ``"pt_sound+smbhb"``).
        templates: the components; their parameter names must not clash.
    """

    def __init__(self, name: str, templates: Sequence[Template]) -> None:
        self.name = name
        self.templates = tuple(templates)
        self.prior = Prior([b for t in self.templates for b in t.blocks])
        self.param_names = self.prior.names

    @property
    def ndim(self) -> int:
        return self.prior.ndim

    def __repr__(self) -> str:
        return f"SpectralModel({self.name!r}, params={list(self.param_names)})"

    def ln_rho2(self, theta: torch.Tensor, freqs: torch.Tensor, tspan: float) -> torch.Tensor:
        """ln rho_k^2 (rho in s) at frequencies ``freqs`` for a batch theta (B, D) -> (B, N)."""
        if theta.ndim != 2 or theta.shape[-1] != self.ndim:
            raise ValueError(
                f"model '{self.name}' takes theta of shape (B, {self.ndim}); got "
                f"{tuple(theta.shape)}"
            )
        params = {n: theta[:, i : i + 1] for i, n in enumerate(self.param_names)}
        f = freqs.to(theta.dtype)
        ln_conv = -torch.log(12 * math.pi**2 * f**3 * tspan)
        ln_omega_to_hc2 = math.log(3 * H100**2 / (2 * math.pi**2)) - 2 * torch.log(f)
        total = None
        for template in self.templates:
            ln_x = template.fn(params, f)
            ln_hc2 = ln_x if template.kind == "hc2" else ln_x + ln_omega_to_hc2
            total = ln_hc2 if total is None else torch.logaddexp(total, ln_hc2)
        return total + ln_conv

    def log10_rho(self, theta: torch.Tensor, freqs: torch.Tensor, tspan: float) -> torch.Tensor:
        """0.5 log10 rho_k^2: the quantity the free-spectrum density is tabulated in."""
        return self.ln_rho2(theta, freqs, tspan) / (2 * LN10)


# --------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------


def _powerlaw_ln_hc2(log10_a: torch.Tensor, gamma: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """h_c = A (f / f_yr)^((3 - gamma) / 2) (Agazie et al. 2023, eq. (2))."""
    return 2 * LN10 * log10_a + (3 - gamma) * torch.log(f / F_YR)


def _powerlaw(p: dict[str, torch.Tensor], f: torch.Tensor) -> torch.Tensor:
    return _powerlaw_ln_hc2(p["log10_A"], p["gamma"], f)


def _smbhb(p: dict[str, torch.Tensor], f: torch.Tensor) -> torch.Tensor:
    return _powerlaw_ln_hc2(p["log10_A_bhb"], p["gamma_bhb"], f)


def _smbhb_fixed(p: dict[str, torch.Tensor], f: torch.Tensor) -> torch.Tensor:
    return _powerlaw_ln_hc2(p["log10_A_bhb"], torch.full_like(p["log10_A_bhb"], 13 / 3), f)


def _turnover(p: dict[str, torch.Tensor], f: torch.Tensor) -> torch.Tensor:
    """Environmental turnover: h_c^2 = A^2 (f/f_yr)^(-4/3) / (1 + (f_bend/f)^kappa).

    Sampson, Cornish & McWilliams 2015 (arXiv:1503.02662), eq. (8); the "turnover" model of
    Agazie et al. 2023 (arXiv:2306.16213), Sec. 5 (gamma fixed to 13/3).
    """
    base = _powerlaw_ln_hc2(p["log10_A_turn"], torch.full_like(p["log10_A_turn"], 13 / 3), f)
    ln_ratio = p["kappa"] * (LN10 * p["log10_f_bend"] - torch.log(f))
    return base - torch.nn.functional.softplus(ln_ratio)


def _broken_shape(x_ln: torch.Tensor, a: float, b: float, c: float) -> torch.Tensor:
    """ln S(x), S(x) = (a + b)^c / (b x^(-a/c) + a x^(b/c))^c (Afzal et al. 2023, eq. (21)).

    S(1) = 1; S ~ x^a below the peak and x^(-b) above it; c sets the width of the peak.
    """
    t1 = math.log(b) - (a / c) * x_ln
    t2 = math.log(a) + (b / c) * x_ln
    return c * math.log(a + b) - c * torch.logaddexp(t1, t2)


# Sound-wave shape x^3 (7 / (4 + 3 x^2))^(7/2) (Caprini et al. 2016, eq. (30)) written as
# S(x; a, b, c) with (a, b, c) = (3, 4, 7/2); PTArcade's pt_sound samples (a, b, c), we fix them.
_SW_A, _SW_B, _SW_C = 3.0, 4.0, 3.5


def _sw_norm(a: float, b: float, c: float) -> float:
    n = (a + b) / c
    return (b / a) ** (a / n) * (n * c / b) ** c * gamma_fn(a / n) * gamma_fn(b / n) / (
        n * gamma_fn(c)
    )


def _pt_sound(p: dict[str, torch.Tensor], f: torch.Tensor) -> torch.Tensor:
    """First-order phase transition, sound waves (Afzal et al. 2023, eqs. (19)-(22); PTArcade
    ``pt_sound``):

        Omega h^2 = N_S h^2 D(T*) Upsilon Delta (H*/beta) (kappa alpha / (1 + alpha))^2 S(f/f_0),

    with H*/beta = H*R* (8 pi)^(-1/3) (v_w = 1), Delta = 3 * 0.012 (8 pi)^(1/3),
    kappa = alpha / (0.73 + 0.083 sqrt(alpha) + alpha), the finite-lifetime suppression
    Upsilon = 1 - (1 + 2 tau_sw H*)^(-1/2), tau_sw H* = H*R* / sqrt(3/4 kappa alpha/(1+alpha)),
    the dilution D = pi^2/90 g*(T*) (g_s,eq/g_s(T*))^(4/3) T_0^4 / (M_pl H_0)^2 and the peak
    f_0 = 0.54 (H*/beta)^(-1) pi sqrt(g*/90) (g_s,eq/g_s(T*))^(1/3) T_0 T* / M_pl.
    Parameters: log10 alpha, log10 (T*/GeV), log10 (H* R*).
    """
    alpha = 10 ** p["log10_alpha"]
    log10_t = p["log10_T_star"]
    t_star = 10**log10_t
    h_r = 10 ** p["log10_H_R"]
    h_beta = h_r * (8 * math.pi) ** (-1 / 3)
    delta = 3 * 0.012 * (8 * math.pi) ** (1 / 3)
    kappa = alpha / (0.73 + 0.083 * torch.sqrt(alpha) + alpha)
    k_frac = kappa * alpha / (1 + alpha)
    tau_h = h_r / torch.sqrt(0.75 * k_frac)
    supp = 1 - (1 + 2 * tau_h) ** -0.5
    gr, gs = g_rho(log10_t), g_s(log10_t)
    gs_eq = G_S_0
    ln_dil = (
        math.log(math.pi**2 / 90) + torch.log(gr) + (4 / 3) * torch.log(gs_eq / gs)
        + 4 * math.log(T0_GEV) - 2 * math.log(M_PL_GEV * H100_GEV)
    )
    f0 = (
        90 ** -0.5 * math.pi * torch.sqrt(gr) * (gs_eq / gs) ** (1 / 3) * T0_GEV / M_PL_GEV
        * t_star * 0.54 / h_beta * GEV_TO_HZ
    )
    ln_s = _broken_shape(torch.log(f) - torch.log(f0), _SW_A, _SW_B, _SW_C)
    return (
        math.log(_sw_norm(_SW_A, _SW_B, _SW_C)) + ln_dil + torch.log(supp) + math.log(delta)
        + torch.log(h_beta) + 2 * torch.log(k_frac) + ln_s
    )


def _domain_walls(p: dict[str, torch.Tensor], f: torch.Tensor) -> torch.Tensor:
    """Annihilating domain walls decaying into Standard-Model particles (Afzal et al. 2023,
    eqs. (28)-(30); PTArcade ``dw_sm``):

        Omega h^2 = eps pi / 960 alpha*^2 g*(T*) (g_s,eq/g_s(T*))^(4/3) T_0^4/(M_pl H_100)^2
                    S(f / f_0),   f_0 = (g_s,eq/g_s)^(1/3) sqrt(pi^2 g*/90) T_0 T* / M_pl,

    with eps = 0.7 and the broken power law S of shape (a, b, c) = (3, 1, 1) (causal f^3 below
    the peak, f^(-1) above; PTArcade samples b and c, we fix them). Parameters: log10 alpha*,
    log10 (T*/GeV).
    """
    log10_t = p["log10_T_star_dw"]
    gr, gs = g_rho(log10_t), g_s(log10_t)
    f0 = (
        (G_S_0 / gs) ** (1 / 3) * torch.sqrt(math.pi**2 * gr / 90) * T0_GEV * 10**log10_t
        / M_PL_GEV * GEV_TO_HZ
    )
    ln_amp = (
        math.log(0.7 * math.pi / 960) + 2 * LN10 * p["log10_alpha_dw"] + torch.log(gr)
        + (4 / 3) * torch.log(G_S_0 / gs) + 4 * math.log(T0_GEV)
        - 2 * math.log(M_PL_GEV * H100_GEV)
    )
    return ln_amp + _broken_shape(torch.log(f) - torch.log(f0), 3.0, 1.0, 1.0)


_STRING_GAMMA = 50.0
_STRING_ALPHA = 0.1
_T0_SECONDS = 4.35e17


def _cosmic_strings(p: dict[str, torch.Tensor], f: torch.Tensor) -> torch.Tensor:
    """Stable Nambu-Goto cosmic strings, a documented analytic template (not PTArcade's
    tabulated BOS spectrum ``string_stable``):

        Omega h^2 = Omega_plat h^2 * x^(3/2) / (1 + x^(3/2)),   x = f / f_p,
        Omega_plat h^2 = 8.04 Omega_r h^2 sqrt(G mu / Gamma)   (Blanco-Pillado & Olum 2017,
                                                                arXiv:1709.02693, eq. (6)),
        f_p = 2 / (alpha Gamma G mu t_0)   (the emission frequency today of the loops that
                                             decay at t_0; loop size alpha t, Gamma = 50).

    Radiation-era loops give the flat plateau; the low-frequency f^(3/2) tail is the causal
    shape of the late-time (matter-era) loop population (Afzal et al. 2023, Sec. 4.3 and
    Fig. 8). Parameter: log10 G mu.
    """
    log10_gmu = p["log10_Gmu"]
    gmu = 10**log10_gmu
    ln_plat = math.log(8.04 * OMEGA_R_H2) + 0.5 * (LN10 * log10_gmu - math.log(_STRING_GAMMA))
    ln_fp = math.log(2 / (_STRING_ALPHA * _STRING_GAMMA * _T0_SECONDS)) - torch.log(gmu)
    ln_x = torch.log(f) - ln_fp
    return ln_plat + 1.5 * ln_x - torch.nn.functional.softplus(1.5 * ln_x)


def _sigw_gauss(p: dict[str, torch.Tensor], f: torch.Tensor) -> torch.Tensor:
    """Scalar-induced GWs from a Gaussian (log-normal) peak in the curvature power spectrum
    (Afzal et al. 2023, eqs. (33)-(35); Pi & Sasaki 2020, eq. (2.1); PTArcade ``sigw_gauss``):

        P_zeta(k) = A / (sqrt(2 pi) Delta) exp(-ln^2(k / k*) / (2 Delta^2)),
        Omega h^2 = c_g Omega_r h^2 * Omega_ind(f / f*, Delta),   Omega_ind ∝ A^2,

    with Omega_ind the radiation-era induced spectrum (Kohri & Terada 2018, eqs. (29)-(30)),
    computed once numerically on a (ln f/f*, Delta) grid (see :mod:`flows.pta.sigw`) and
    interpolated; c_g = (g*/g*0)(g_s0/g_s)^(4/3) at g* = g_s = 10.75.
    Parameters: log10 A, Delta, log10 (f*/Hz).
    """
    from .sigw import ln_omega_sigw_gauss

    cg = (10.75 / G_RHO_0) * (G_S_0 / 10.75) ** (4 / 3)
    ln_x = torch.log(f) - LN10 * p["log10_f_star"]
    return (
        math.log(cg * OMEGA_R_H2) + 2 * LN10 * p["log10_A_sigw"]
        + ln_omega_sigw_gauss(ln_x, p["width"])
    )


_PL = Template(
    "powerlaw",
    (Uniform("log10_A", -18.0, -14.0), Uniform("gamma", 0.0, 7.0)),
    "hc2",
    _powerlaw,
    "power law, log10 A ~ U(-18,-14), gamma ~ U(0,7)",
)
_SMBHB = Template(
    "smbhb",
    (BivariateNormal(("log10_A_bhb", "gamma_bhb"), SMBHB_MEAN, SMBHB_COV),),
    "hc2",
    _smbhb,
    "SMBHB power law with the NANOGrav astrophysical 2-D Gaussian prior on (log10 A, gamma)",
)
_SMBHB_FIXED = Template(
    "smbhb_fixed",
    (Uniform("log10_A_bhb", -18.0, -14.0),),
    "hc2",
    _smbhb_fixed,
    "SMBHB power law with gamma = 13/3, log10 A ~ U(-18,-14)",
)
_TURNOVER = Template(
    "turnover",
    (
        Uniform("log10_A_turn", -18.0, -14.0),
        Uniform("log10_f_bend", -9.5, -7.5),
        Uniform("kappa", 0.0, 10.0),
    ),
    "hc2",
    _turnover,
    "SMBHB gamma=13/3 with an environmental low-frequency turnover",
)
_PT_SOUND = Template(
    "pt_sound",
    (
        Uniform("log10_alpha", -2.0, 1.0),
        Uniform("log10_T_star", -4.0, 4.0),
        Uniform("log10_H_R", -3.0, 0.5),
    ),
    "omega",
    _pt_sound,
    "first-order phase transition, sound waves",
)
_SIGW = Template(
    "sigw_gauss",
    (
        Uniform("log10_A_sigw", -3.0, 1.0),
        Uniform("width", 0.1, 3.0),
        Uniform("log10_f_star", -11.0, -5.0),
    ),
    "omega",
    _sigw_gauss,
    "scalar-induced GWs, Gaussian peak in ln k",
)
_DW = Template(
    "domain_walls",
    (Uniform("log10_alpha_dw", -3.0, 0.0), Uniform("log10_T_star_dw", -4.0, 4.0)),
    "omega",
    _domain_walls,
    "annihilating domain walls (decay to SM)",
)
_STRINGS = Template(
    "cosmic_strings",
    (Uniform("log10_Gmu", -14.0, -6.0),),
    "omega",
    _cosmic_strings,
    "stable cosmic strings, analytic plateau + f^(3/2) template",
)

_TEMPLATES: dict[str, Template] = {
    t.name: t for t in (_PL, _SMBHB, _SMBHB_FIXED, _TURNOVER, _PT_SOUND, _SIGW, _DW, _STRINGS)
}
_NEW_PHYSICS = ("pt_sound", "sigw_gauss", "domain_walls", "cosmic_strings")


def available_models() -> list[str]:
    """Every model name the registry builds (templates and their "+smbhb" combinations)."""
    names = list(_TEMPLATES)
    names += [f"{n}+smbhb" for n in _NEW_PHYSICS]
    return names


def build_model(name: str) -> SpectralModel:
    """Build a spectral model by name, e.g. ``"powerlaw"`` or ``"pt_sound+smbhb"``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string; got {name!r}")
    parts = [p.strip() for p in name.split("+")]
    unknown = [p for p in parts if p not in _TEMPLATES]
    if unknown or len(set(parts)) != len(parts):
        raise ValueError(
            f"model '{name}' is unknown; choose one of: {', '.join(available_models())} "
            f"(or any '+'-sum of distinct templates: {', '.join(_TEMPLATES)})"
        )
    templates = [_TEMPLATES[p] for p in parts]
    names = [n for t in templates for b in t.blocks for n in b.names]
    if len(set(names)) != len(names):
        raise ValueError(f"model '{name}' combines templates with clashing parameters {names}")
    return SpectralModel("+".join(parts), templates)
