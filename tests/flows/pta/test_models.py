"""flows.pta spectra against values computed independently here from the published formulas
(PTArcade's model files of the NANOGrav 15-year search, Kohri-Terada, the BOS string model),
in plain NumPy with the constants written out, at a few frequencies."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import gamma as gamma_fn

from flows.pta import build_model
from flows.pta.cosmology import G_RHO_0, G_S_0, M_PL_GEV, g_rho, g_s
from flows.pta.sigw import induced_omega

from .string_oracle import string_omega_h2

RESOURCES = Path(__file__).resolve().parents[3] / "flows/pta/resources/ptarcade"
TSPAN = 505_861_299.0
FREQS = np.array([1.0, 3.0, 8.0, 14.0]) / TSPAN

# constants (CODATA 2018, PDG, Planck 2018), written out independently of flows.pta.cosmology
HBAR = 6.582119569e-25  # GeV s
M_PL = (8 * math.pi * 6.70883e-39) ** -0.5  # GeV
T_0 = 2.7255 * 8.617333262e-14  # GeV
H_100 = 1e5 / 3.0856775814913673e22  # 1/s
LITTLE_H = 0.674
OMEGA_R = 9.2188e-5


def _g_table() -> dict[str, np.ndarray]:
    with np.load(RESOURCES / "g_star.npz") as table:
        return {k: table[k] for k in table.files}


G = _g_table()


def _g(x: float | np.ndarray, column: str, value: str) -> np.ndarray:
    return np.interp(x, G[column], G[value])


def _rho2(omega_h2: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Omega h^2 -> h_c^2 -> rho^2 in s^2 (PTArcade omega2cross, ceffyl mode)."""
    h_c2 = 3 * H_100**2 * omega_h2 / (2 * math.pi**2 * f**2)
    return h_c2 / (12 * math.pi**2 * f**3 * TSPAN)


def _model_rho2(name: str, theta: list[float]) -> np.ndarray:
    model = build_model(name)
    t = torch.tensor([theta], dtype=torch.float64)
    return model.ln_rho2(t, torch.as_tensor(FREQS), TSPAN).exp().numpy()[0]


def _shape(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return (a + b) ** c / (b * x ** (-a / c) + a * x ** (b / c)) ** c


def _pt_sound(f: np.ndarray, log10_alpha: float, log10_t: float, log10_hr: float, a: float,
              b: float, c: float) -> np.ndarray:
    alpha, t_star, h_r = 10**log10_alpha, 10**log10_t, 10**log10_hr
    h_beta = h_r * (8 * math.pi) ** (-1 / 3)
    kappa = alpha / (0.73 + 0.083 * alpha**0.5 + alpha)
    suppression = 1 - (1 + 2 * h_r / (0.75 * kappa * alpha / (1 + alpha)) ** 0.5) ** -0.5
    g_star = _g(t_star, "temperature_gev", "g_rho")
    gs_star = _g(t_star, "temperature_gev", "g_s")
    gs_eq = G["g_s"][0]  # T_eq ~ 0.8 eV lies below the table
    n = (a + b) / c
    norm = (b / a) ** (a / n) * (n * c / b) ** c * gamma_fn(a / n) * gamma_fn(b / n) / (
        n * gamma_fn(c))
    dilution = (math.pi**2 / 90 * g_star * (gs_eq / gs_star) ** (4 / 3) * T_0**4
                / (M_PL * LITTLE_H * H_100 * HBAR) ** 2)
    f_0 = (90**-0.5 * math.pi * g_star**0.5 * (gs_eq / gs_star) ** (1 / 3) * T_0 / M_PL
           * t_star * 0.54 / h_beta / HBAR)
    return (norm * LITTLE_H**2 * dilution * suppression * 3 * 0.012 * (8 * math.pi) ** (1 / 3)
            * h_beta * (kappa * alpha / (1 + alpha)) ** 2 * _shape(f / f_0, a, b, c))


def _domain_walls(f: np.ndarray, log10_alpha: float, log10_t: float, b: float,
                  c: float) -> np.ndarray:
    alpha, t_star = 10**log10_alpha, 10**log10_t
    g_star = _g(t_star, "temperature_gev", "g_rho")
    gs_star = _g(t_star, "temperature_gev", "g_s")
    gs_eq = G["g_s"][0]
    f_0 = ((gs_eq / gs_star) ** (1 / 3) * (math.pi**2 * g_star / 90) ** 0.5 * T_0 * t_star
           / M_PL / HBAR)
    return (0.7 * math.pi / 960 * alpha**2 * g_star * (gs_eq / gs_star) ** (4 / 3) * T_0**4
            / (M_PL * H_100 * HBAR) ** 2 * _shape(f / f_0, 3.0, b, c))


def test_constants_and_degrees_of_freedom_follow_ptarcade() -> None:
    assert M_PL_GEV == pytest.approx(2.435e18, rel=1e-3)
    # today (and at equality) the table's first row: PTArcade's g_rho_0, g_s_0
    assert (G_RHO_0, G_S_0) == pytest.approx((3.38308, 3.93094), rel=1e-6)
    temps = np.array([1e-3, 0.15, 0.2, 3.0, 1e3, 1e7])  # last one beyond the table: clamped
    got_rho = g_rho(torch.as_tensor(temps)).numpy()
    got_s = g_s(torch.as_tensor(temps)).numpy()
    np.testing.assert_allclose(got_rho, _g(temps, "temperature_gev", "g_rho"), rtol=1e-12)
    np.testing.assert_allclose(got_s, _g(temps, "temperature_gev", "g_s"), rtol=1e-12)
    assert 10 < got_rho[0] < 11 and got_rho[-2] > 100  # e+e- era / unbroken Standard Model


@pytest.mark.float64
@pytest.mark.parametrize(
    "theta", [[-0.01, -1.75, -0.82, 3.0, 2.0, 5.0], [0.5, 1.0, -2.0, 4.5, 3.2, 3.3]]
)
def test_pt_sound_matches_ptarcade_formula(theta: list[float]) -> None:
    np.testing.assert_allclose(
        _model_rho2("pt_sound", theta), _rho2(_pt_sound(FREQS, *theta), FREQS), rtol=1e-9
    )


@pytest.mark.float64
def test_fixed_shape_variants_pin_the_shapes() -> None:
    pt = [-0.5, -1.0, -1.5]
    np.testing.assert_allclose(
        _model_rho2("pt_sound_fixed", pt), _rho2(_pt_sound(FREQS, *pt, 3, 4, 3.5), FREQS),
        rtol=1e-9,
    )
    dw = [-1.0, -0.7]
    np.testing.assert_allclose(
        _model_rho2("domain_walls_fixed", dw), _rho2(_domain_walls(FREQS, *dw, 1, 1), FREQS),
        rtol=1e-9,
    )


@pytest.mark.float64
@pytest.mark.parametrize("theta", [[-0.92, -0.79, 0.5, 3.0], [-2.5, 2.0, 0.9, 0.4]])
def test_domain_walls_match_ptarcade_formula(theta: list[float]) -> None:
    np.testing.assert_allclose(
        _model_rho2("domain_walls", theta), _rho2(_domain_walls(FREQS, *theta), FREQS),
        rtol=1e-9,
    )


def test_shape_normalisation_is_the_integral_over_ln_x() -> None:
    from scipy.integrate import quad

    from flows.pta.templates import ln_shape_integral

    for shape in [(3, 4, 3.5), (3, 2, 5), (4.2, 2.5, 3.1)]:
        integral = quad(lambda lx, s=shape: _shape(np.exp(lx), *s), -80, 80, limit=400)[0]
        got = ln_shape_integral(*shape, torch.zeros((), dtype=torch.float64)).exp().item()
        assert got == pytest.approx(integral, rel=1e-8)


# Omega_ind / A^2 of PTArcade's sigw_gauss table (models_data/sigw_log.h5), log10 at
# log10 f_peak = -8 and (width, log10 f): an independent numerical integration.
PTARCADE_SIGW = {
    (0.5, -9.0): -1.992, (0.5, -8.5): -1.164, (0.5, -8.0): -0.523, (0.5, -7.5): -2.169,
    (1.0, -8.5): -1.367, (1.0, -8.0): -0.986, (1.6, -8.0): -1.344, (3.0, -8.0): -1.855,
}


@pytest.mark.float64
def test_sigw_kernel_integral_matches_ptarcade_table() -> None:
    for (width, log10_f), expected in PTARCADE_SIGW.items():
        got = math.log10(induced_omega(math.log(10 ** (log10_f + 8.0)), width)[0])
        assert got == pytest.approx(expected, abs=0.005), (width, log10_f)


@pytest.mark.float64
def test_sigw_gauss_spectrum_has_ptarcade_prefactor() -> None:
    log10_a, width, log10_fp = -1.0, 1.0, -7.5
    f = FREQS
    dof = (_g(f, "frequency_hz", "g_rho") / G["g_rho"][0]
           * (G["g_s"][0] / _g(f, "frequency_hz", "g_s")) ** (4 / 3))
    omega = (LITTLE_H**2 * OMEGA_R * dof * 10 ** (2 * log10_a)
             * induced_omega(np.log(f / 10**log10_fp), width))
    # the model interpolates a cached table of the same integral: 2% is its table error
    np.testing.assert_allclose(
        _model_rho2("sigw_gauss", [log10_a, width, log10_fp]), _rho2(omega, f), rtol=0.02
    )


@pytest.mark.float64
def test_sigw_narrow_peak_approaches_delta_closed_form() -> None:
    # Kohri & Terada 2018, eq. (40): the delta-peak limit of the same double integral.
    def delta(x: float) -> float:
        s = 3 * x**2 - 2
        resonance = np.pi**2 * s**2 * (x < 2 / np.sqrt(3))
        return (3 / 64 * ((4 - x**2) / 4) ** 2 * x**2 * s**2
                * (resonance + (4 + s * np.log(abs(1 - 4 / (3 * x**2)))) ** 2))

    for x in (0.3, 0.6, 1.5):
        got = induced_omega(np.log(x), 0.01, nodes=(200, 200))[0]
        assert got == pytest.approx(delta(x), rel=0.01)
    # beyond k = 2 k* (ln x well above ln 2 for a narrow peak) nothing is induced
    assert induced_omega(np.log(2.5), 0.02)[0] < 1e-40


@pytest.mark.float64
@pytest.mark.parametrize(("name", "q"), [("cosmic_strings_c", 4 / 3),
                                         ("cosmic_strings_k", 5 / 3),
                                         ("cosmic_strings_n", 4 / 3)])
def test_stable_strings_match_an_independent_bos_calculation(name: str, q: float) -> None:
    """The bundled PTArcade tables vs the oracle: cusps and kinks within 0.03 dex; the
    simulated loop spectrum (STABLE-N) is close to cusps' n^(-4/3), within 0.05 dex."""
    table = (G["temperature_gev"], G["g_rho"], G["g_s"])
    tolerance = 0.05 if name.endswith("_n") else 0.03
    for log10_gmu in (-11.0, -8.5):
        expected = _rho2(string_omega_h2(FREQS, 10**log10_gmu, q, table), FREQS)
        got = _model_rho2(name, [log10_gmu])
        np.testing.assert_array_less(np.abs(np.log10(got / expected)), tolerance)


@pytest.mark.float64
def test_string_tables_interpolate_like_ptarcade() -> None:
    with np.load(RESOURCES / "stable_c.npz") as t:
        grid, g0, dg = t["log10_omega_h2"], float(t["log10_gmu_start"]), float(t["log10_gmu_step"])
        f0, df = float(t["log10_f_start"]), float(t["log10_f_step"])
    # on a node: the table value; between nodes: bilinear in (log10 G mu, log10 f)
    i, j = 30, 25
    node = _model_rho2("cosmic_strings_c", [g0 + i * dg])
    log10_f = np.log10(FREQS)
    pos = (log10_f - f0) / df
    lo = np.floor(pos).astype(int)
    expected_log10 = grid[i, lo] * (1 - (pos - lo)) + grid[i, lo + 1] * (pos - lo)
    np.testing.assert_allclose(node, _rho2(10**expected_log10, FREQS), rtol=1e-10)
    half = _model_rho2("cosmic_strings_c", [g0 + (i + 0.5) * dg])
    upper = grid[i + 1, lo] * (1 - (pos - lo)) + grid[i + 1, lo + 1] * (pos - lo)
    np.testing.assert_allclose(
        half, _rho2(10 ** (0.5 * (expected_log10 + upper)), FREQS), rtol=1e-10
    )
    assert j < grid.shape[1]


def test_string_tables_refuse_frequencies_outside_them() -> None:
    model = build_model("cosmic_strings_n")
    theta = torch.tensor([[-10.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"outside the bundled table \(log10 f/Hz in \[-10"):
        model.ln_rho2(theta, torch.tensor([1e-11, 1e-9], dtype=torch.float64), TSPAN)
    # a G mu outside the table (hence outside the prior) gives NaN, which the prior discards
    out = model.ln_rho2(torch.tensor([[-20.0]], dtype=torch.float64),
                        torch.as_tensor(FREQS), TSPAN)
    assert torch.isnan(out).all()


def test_renamed_and_unknown_models_say_what_to_use() -> None:
    with pytest.raises(ValueError, match="'cosmic_strings' was renamed: use cosmic_strings_n"):
        build_model("cosmic_strings+smbhb")
    with pytest.raises(ValueError, match="model 'pt_sund' is unknown; choose one of: powerlaw"):
        build_model("pt_sund")
    with pytest.raises(ValueError, match="clashing parameters"):
        build_model("smbhb+smbhb_fixed")
