r"""Registry of stochastic gravitational-wave background spectral models for PTA refits.

Every model maps a batch of parameters theta (B, D) to the timing-residual power per frequency
bin, returned as ``ln rho_k^2`` (B, N) with rho in seconds:

    rho_k^2 = h_c(f_k)^2 / (12 pi^2 f_k^3 T),                     T = 1 / f_1,
    h_c(f)^2 = 3 H_100^2 Omega_GW(f) h^2 / (2 pi^2 f^2),          H_100 = 100 km/s/Mpc,

(PTArcade's ``omega2cross`` in ceffyl mode). Templates (:mod:`flows.pta.templates`,
:mod:`flows.pta.strings`) compute ln h_c^2 or ln Omega_GW h^2 so that float32 never underflows;
components of an "a+b" model add in rho^2 (log-add-exp). The new-physics models carry the
names, priors and formulas of PTArcade's model files for the NANOGrav 15-year search; the
``*_fixed`` variants pin the shape parameters, and ``cosmic_strings_analytic`` is a template of
our own. docs/pta.md tabulates every model against its PTArcade definition.

References:
    A. Afzal et al. (NANOGrav), "The NANOGrav 15 yr Data Set: Search for Signals from New
    Physics", ApJL 951 L11 (2023), arXiv:2306.16219.
    A. Mitridate, D. Wright, R. von Eckardstein, T. Schroeder, J. Nay, K. Olum, K. Schmitz,
    T. Trickle, "PTArcade", arXiv:2306.16377 (model files, priors and conventions).
    G. Agazie et al. (NANOGrav), arXiv:2306.16213 (power law and its priors).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from . import strings, templates
from .cosmology import H100
from .priors import BivariateNormal, Prior, PriorBlock, Uniform

__all__ = [
    "F_YR",
    "H100",
    "SMBHB_COV",
    "SMBHB_MEAN",
    "SpectralModel",
    "Template",
    "available_models",
    "build_model",
]

F_YR = templates.F_YR

# NANOGrav 15-yr astrophysical SMBHB prior on (log10 A, gamma) (holodeck population synthesis;
# PTArcade's ``bhb_priors["NG15"]``).
SMBHB_MEAN = (-15.61492963, 4.70709637)
SMBHB_COV = ((0.27871359, -0.00263617), (-0.00263617, 0.12415383))

LN10 = math.log(10.0)
Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Template:
    """One spectral component.

    Attributes:
        name: registry name.
        blocks: prior blocks of its parameters (in order).
        kind: "hc2" (``fn`` returns ln h_c^2) or "omega" (``fn`` returns ln Omega_GW h^2).
        fn: ``fn(params, f)`` with params a dict name -> (B, 1) tensor and f (N,) in Hz,
            returning a (B, N) tensor.
        description: one line for tables and the docs.
    """

    name: str
    blocks: tuple[PriorBlock, ...]
    kind: str
    fn: Callable[[Params, torch.Tensor], torch.Tensor]
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
# Parameter adapters: registry parameter names -> template arguments
# --------------------------------------------------------------------------------------------


def _powerlaw(p: Params, f: torch.Tensor) -> torch.Tensor:
    return templates.powerlaw(p["log10_A"], p["gamma"], f)


def _smbhb(p: Params, f: torch.Tensor) -> torch.Tensor:
    return templates.powerlaw(p["log10_A_bhb"], p["gamma_bhb"], f)


def _smbhb_fixed(p: Params, f: torch.Tensor) -> torch.Tensor:
    return templates.powerlaw(p["log10_A_bhb"], torch.full_like(p["log10_A_bhb"], 13 / 3), f)


def _turnover(p: Params, f: torch.Tensor) -> torch.Tensor:
    return templates.turnover(p["log10_A_turn"], p["log10_f_bend"], p["kappa"], f)


def _pt_sound(shape: tuple[float, float, float] | None, p: Params, f: torch.Tensor) -> torch.Tensor:
    a, b, c = shape if shape is not None else (p["a"], p["b"], p["c"])
    return templates.sound_waves(p["log10_alpha"], p["log10_T_star"], p["log10_H_R"], a, b, c, f)


def _domain_walls(shape: tuple[float, float] | None, p: Params, f: torch.Tensor) -> torch.Tensor:
    b, c = shape if shape is not None else (p["b_dw"], p["c_dw"])
    return templates.domain_walls(p["log10_alpha_dw"], p["log10_T_star_dw"], b, c, f)


def _sigw_gauss(p: Params, f: torch.Tensor) -> torch.Tensor:
    return templates.sigw_gauss(p["log10_A_sigw"], p["width"], p["log10_f_star"], f)


def _strings(table: str, p: Params, f: torch.Tensor) -> torch.Tensor:
    return strings.tabulated_strings(table, p["log10_Gmu"], f)


def _strings_analytic(p: Params, f: torch.Tensor) -> torch.Tensor:
    return strings.analytic_strings(p["log10_Gmu"], f)


# --------------------------------------------------------------------------------------------
# The registry (priors: PTArcade's model files of the NANOGrav 15-yr search where one exists)
# --------------------------------------------------------------------------------------------

_PT_COMMON = (
    Uniform("log10_alpha", -2.0, 1.0),
    Uniform("log10_T_star", -4.0, 4.0),
    Uniform("log10_H_R", -3.0, 0.0),
)
_DW_COMMON = (Uniform("log10_alpha_dw", -3.0, 0.0), Uniform("log10_T_star_dw", -4.0, 4.0))
# the shapes the "*_fixed" variants pin: sound waves x^3 (7/(4 + 3x^2))^(7/2) (Caprini et al.
# 2016, eq. (30)) and causal-tail domain walls f^3 below / f^-1 above the peak
SOUND_WAVE_SHAPE = (3.0, 4.0, 3.5)
DOMAIN_WALL_SHAPE = (1.0, 1.0)
_GMU = (Uniform("log10_Gmu", -14.0, -6.0),)

_TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template(
            "powerlaw", (Uniform("log10_A", -18.0, -14.0), Uniform("gamma", 0.0, 7.0)), "hc2",
            _powerlaw, "power law, log10 A ~ U(-18, -14), gamma ~ U(0, 7)",
        ),
        Template(
            "smbhb", (BivariateNormal(("log10_A_bhb", "gamma_bhb"), SMBHB_MEAN, SMBHB_COV),),
            "hc2", _smbhb,
            "SMBHB power law, NANOGrav's astrophysical 2-D Gaussian prior on (log10 A, gamma)",
        ),
        Template(
            "smbhb_fixed", (Uniform("log10_A_bhb", -18.0, -14.0),), "hc2", _smbhb_fixed,
            "SMBHB power law with gamma = 13/3, log10 A ~ U(-18, -14)",
        ),
        Template(
            "turnover",
            (Uniform("log10_A_turn", -18.0, -14.0), Uniform("log10_f_bend", -9.5, -7.5),
             Uniform("kappa", 0.0, 10.0)),
            "hc2", _turnover, "SMBHB gamma = 13/3 with an environmental low-frequency turnover",
        ),
        Template(
            "pt_sound",
            _PT_COMMON + (Uniform("a", 3.0, 5.0), Uniform("b", 2.0, 4.0), Uniform("c", 3.0, 5.0)),
            "omega", partial(_pt_sound, None),
            "first-order phase transition, sound waves (PTArcade pt_sound)",
        ),
        Template(
            "pt_sound_fixed", _PT_COMMON, "omega", partial(_pt_sound, SOUND_WAVE_SHAPE),
            "pt_sound with the shape fixed to (a, b, c) = (3, 4, 7/2)",
        ),
        Template(
            "domain_walls",
            _DW_COMMON + (Uniform("b_dw", 0.5, 1.0), Uniform("c_dw", 0.3, 3.0)),
            "omega", partial(_domain_walls, None),
            "annihilating domain walls decaying to SM particles (PTArcade dw_sm)",
        ),
        Template(
            "domain_walls_fixed", _DW_COMMON, "omega", partial(_domain_walls, DOMAIN_WALL_SHAPE),
            "domain_walls with the shape fixed to (a, b, c) = (3, 1, 1)",
        ),
        Template(
            "sigw_gauss",
            (Uniform("log10_A_sigw", -3.0, 1.0), Uniform("width", 0.1, 3.0),
             Uniform("log10_f_star", -11.0, -5.0)),
            "omega", _sigw_gauss,
            "scalar-induced GWs, log-normal curvature peak (PTArcade sigw_gauss)",
        ),
        Template(
            "cosmic_strings_c", _GMU, "omega", partial(_strings, "stable_c"),
            "stable cosmic strings, cusps (PTArcade's tabulated STABLE-C spectrum)",
        ),
        Template(
            "cosmic_strings_k", _GMU, "omega", partial(_strings, "stable_k"),
            "stable cosmic strings, kinks (PTArcade's tabulated STABLE-K spectrum)",
        ),
        Template(
            "cosmic_strings_n", _GMU, "omega", partial(_strings, "stable_n"),
            "stable cosmic strings, simulated loop spectrum (PTArcade's tabulated STABLE-N)",
        ),
        Template(
            "cosmic_strings_analytic", _GMU, "omega", _strings_analytic,
            "stable cosmic strings, analytic plateau + f^(3/2) template (not PTArcade's)",
        ),
    )
}
_NEW_PHYSICS = (
    "pt_sound", "pt_sound_fixed", "domain_walls", "domain_walls_fixed",
    "sigw_gauss", "cosmic_strings_c", "cosmic_strings_k", "cosmic_strings_n",
    "cosmic_strings_analytic",
)
# names that were used before and now mean something else: refuse them with the new names
_RENAMED = {
    "cosmic_strings": "cosmic_strings_n (or _c, _k: PTArcade's tabulated spectra) or "
    "cosmic_strings_analytic (the former analytic template)",
}


def available_models() -> list[str]:
    """Every model name the registry builds (templates and their "+smbhb" combinations)."""
    return list(_TEMPLATES) + [f"{n}+smbhb" for n in _NEW_PHYSICS]


def describe(name: str) -> str:
    """The one-line description of a registry template."""
    return _TEMPLATES[name].description


def build_model(name: str) -> SpectralModel:
    """Build a spectral model by name, e.g. ``"powerlaw"`` or ``"pt_sound+smbhb"``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string; got {name!r}")
    parts = [p.strip() for p in name.split("+")]
    renamed = [p for p in parts if p in _RENAMED]
    if renamed:
        raise ValueError(f"model '{renamed[0]}' was renamed: use {_RENAMED[renamed[0]]}")
    unknown = [p for p in parts if p not in _TEMPLATES]
    if unknown or len(set(parts)) != len(parts):
        raise ValueError(
            f"model '{name}' is unknown; choose one of: {', '.join(available_models())} "
            f"(or any '+'-sum of distinct templates: {', '.join(_TEMPLATES)})"
        )
    parts_templates = [_TEMPLATES[p] for p in parts]
    names = [n for t in parts_templates for b in t.blocks for n in b.names]
    if len(set(names)) != len(names):
        raise ValueError(f"model '{name}' combines templates with clashing parameters {names}")
    return SpectralModel("+".join(parts), parts_templates)
