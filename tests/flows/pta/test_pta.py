"""Tests of flows.pta: loader and bundled data, refit likelihood, spectral models, priors, grid
evidence, sampling, plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from flows.pta import (
    BivariateNormal,
    FreeSpectrumLikelihood,
    ModelPosterior,
    Prior,
    Uniform,
    available_models,
    build_model,
    grid_evidence,
    load_free_spectrum,
)
from flows.pta.data import BUNDLED
from flows.pta.diagnostics import hellinger_distance
from flows.pta.models import F_YR, SMBHB_COV, SMBHB_MEAN

HD = BUNDLED["ng15-hd"]


def _write_spectrum(root: Path, nfreq: int = 5, ngrid: int = 200, seed: int = 0) -> Path:
    """A small synthetic ceffyl directory with Gaussian densities in log10 rho."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    tspan = 5.0e8
    freqs = np.arange(1, nfreq + 1) / tspan
    grid = np.linspace(-10.0, -5.0, ngrid)
    centres = rng.uniform(-8.0, -6.5, nfreq)
    dens = -0.5 * ((grid[None] - centres[:, None]) / 0.3) ** 2 - math.log(
        0.3 * math.sqrt(2 * math.pi)
    )
    np.save(root / "freqs.npy", freqs)
    np.save(root / "log10rhogrid.npy", grid)
    np.save(root / "density.npy", dens[None])
    return root


# ---------------------------------------------------------------------------------------------
# loader
# ---------------------------------------------------------------------------------------------


def test_loader_reads_synthetic_dir_and_cuts_frequencies(tmp_path: Path) -> None:
    root = _write_spectrum(tmp_path / "fs", nfreq=6)
    data = load_free_spectrum(root, nfreqs=4)
    assert data.nfreqs == 4
    assert data.ln_density.shape == (4, 200)
    np.testing.assert_allclose(data.tspan, 5.0e8)
    np.testing.assert_allclose(data.ln_density, np.load(root / "density.npy")[0, :4])


def test_loader_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_free_spectrum(tmp_path / "nowhere")
    root = _write_spectrum(tmp_path / "fs", nfreq=5)
    with pytest.raises(ValueError, match="exceeds the 5 frequencies"):
        load_free_spectrum(root, nfreqs=6)
    with pytest.raises(ValueError, match="nfreqs must be an integer in 1..30"):
        load_free_spectrum(root, nfreqs=31)
    with pytest.raises(ValueError, match="nfreqs must be an integer"):
        load_free_spectrum(root, nfreqs=0)
    np.save(root / "density.npy", np.zeros((1, 4, 200)))
    with pytest.raises(ValueError, match=r"expected \(N, G\) = \(5, 200\)"):
        load_free_spectrum(root, nfreqs=3)
    (root / "density.npy").unlink()
    with pytest.raises(FileNotFoundError, match="lacks density.npy"):
        load_free_spectrum(root)


def test_bundled_data_is_the_default_and_matches_the_ceffyl_files() -> None:
    data = load_free_spectrum()
    assert data.nfreqs == 14 and data.path == HD
    assert data.ln_density.shape == (14, 10000)
    np.testing.assert_allclose(data.freqs[0], 1.976826e-9, rtol=1e-6)
    assert load_free_spectrum("ng15-cp", nfreqs=30).nfreqs == 30
    # the compressed density is the published one (its maxima sit at NANOGrav's free-spectrum
    # modes: log10 rho of the first bin about -6.5)
    assert data.log10_rho_grid[np.argmax(data.ln_density[0])] == pytest.approx(-6.51, abs=0.02)
    with pytest.raises(FileNotFoundError, match="ng15-hd, ng15-cp"):
        load_free_spectrum("ng15-xx")


def test_loader_reads_one_array_npz_files(tmp_path: Path) -> None:
    root = _write_spectrum(tmp_path / "fs", nfreq=4)
    dense = np.load(root / "density.npy")
    (root / "density.npy").unlink()
    np.savez_compressed(root / "density.npz", anything=dense)
    np.testing.assert_array_equal(load_free_spectrum(root, nfreqs=4).ln_density, dense[0])
    np.savez(root / "density.npz", a=dense, b=dense)
    with pytest.raises(ValueError, match="holds 2 arrays"):
        load_free_spectrum(root, nfreqs=4)
    (root / "density.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable NumPy file"):
        load_free_spectrum(root, nfreqs=4)


# ---------------------------------------------------------------------------------------------
# likelihood
# ---------------------------------------------------------------------------------------------


def _direct_ln_likelihood(root: Path, nfreqs: int, x: np.ndarray, linear: bool) -> np.ndarray:
    """Reference: index the raw arrays by hand (one point, one frequency at a time)."""
    grid = np.load(root / "log10rhogrid.npy")
    with np.load(root / "density.npz") as stored:
        dens = stored["density"][0]
    out = np.zeros(len(x))
    for b in range(len(x)):
        for k in range(nfreqs):
            if linear:
                out[b] += np.interp(x[b, k], grid, dens[k])
            else:
                out[b] += dens[k, int(np.argmin(np.abs(grid - x[b, k])))]
    return out


@pytest.mark.float64
@pytest.mark.parametrize("name", ["powerlaw", "smbhb", "pt_sound+smbhb", "domain_walls"])
@pytest.mark.parametrize("interpolation", ["nearest", "linear"])
def test_likelihood_matches_direct_raw_evaluation(name: str, interpolation: str) -> None:
    data = load_free_spectrum(HD, nfreqs=14)
    model = build_model(name)
    post = ModelPosterior(model, data, interpolation=interpolation)
    theta = model.prior.sample(25, np.random.default_rng(1))
    x = post.log10_rho(torch.as_tensor(theta)).numpy()
    inside = (x > data.log10_rho_grid[0]).all(1) & (x < data.log10_rho_grid[-1]).all(1)
    assert inside.sum() >= 10  # the comparison must exercise the interior of the grid
    expected = _direct_ln_likelihood(HD, 14, x[inside], interpolation == "linear")
    got = post.ln_likelihood(theta[inside])
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-7)
    # torch input gives the same numbers as numpy input
    got_t = post.ln_likelihood(torch.as_tensor(theta[inside])).numpy()
    np.testing.assert_allclose(got_t, got, rtol=1e-12)


def test_grid_edges_below_takes_lowest_bin_above_is_minus_inf_or_floor(tmp_path: Path) -> None:
    data = load_free_spectrum(_write_spectrum(tmp_path / "fs", nfreq=3), nfreqs=3)
    lowest = data.ln_density[:, 0]
    below = torch.full((1, 3), -30.0, dtype=torch.float64)
    above = torch.tensor([[-7.0, -7.0, -1.0]], dtype=torch.float64)
    for interpolation in ("nearest", "linear"):
        like = FreeSpectrumLikelihood(data, interpolation=interpolation)
        np.testing.assert_allclose(like(below).numpy(), [lowest.sum()])
        assert like(above).item() == -math.inf
        floor = FreeSpectrumLikelihood(data, interpolation=interpolation, above="floor")
        per = floor.per_frequency(above).numpy()[0]
        assert per[2] == pytest.approx(data.ln_density[2].min())
        assert np.isfinite(floor(above).item())
        # NaN (a spectrum undefined outside the prior) counts as above the grid
        undefined = torch.tensor([[-7.0, math.nan, -7.0]], dtype=torch.float64)
        assert like(undefined).item() == -math.inf
        assert floor.per_frequency(undefined)[0, 1].item() == pytest.approx(
            data.ln_density[1].min())
    with pytest.raises(ValueError, match="interpolation must be"):
        FreeSpectrumLikelihood(data, interpolation="cubic")


@pytest.mark.float64
def test_powerlaw_rho2_matches_formula() -> None:
    model = build_model("powerlaw")
    tspan = 505_861_299.0
    freqs = torch.arange(1, 15, dtype=torch.float64) / tspan
    for log10_a, gamma in [(-14.2, 3.2), (-15.0, 13 / 3), (-17.0, 0.5)]:
        a = 10.0**log10_a
        f = freqs.numpy()
        expected = a**2 * (f / F_YR) ** (3 - gamma) / (12 * np.pi**2 * f**3 * tspan)
        theta = torch.tensor([[log10_a, gamma]], dtype=torch.float64)
        got = model.ln_rho2(theta, freqs, tspan).exp().numpy()[0]
        np.testing.assert_allclose(got, expected, rtol=1e-12)
        half_log10 = model.log10_rho(theta, freqs, tspan).numpy()[0]
        np.testing.assert_allclose(half_log10, 0.5 * np.log10(expected), rtol=1e-12)


def test_models_run_in_float32_and_float64_and_components_add() -> None:
    tspan = 505_861_299.0
    freqs = torch.arange(1, 15, dtype=torch.float64) / tspan
    rng = np.random.default_rng(3)
    for name in available_models():
        model = build_model(name)
        theta = model.prior.sample(16, rng)
        for dtype in (torch.float32, torch.float64):
            out = model.ln_rho2(torch.as_tensor(theta, dtype=dtype), freqs, tspan)
            assert out.dtype == dtype and out.shape == (16, 14)
            assert torch.isfinite(out).all(), name
    combo = build_model("domain_walls+smbhb")
    dw, bhb = build_model("domain_walls"), build_model("smbhb")
    theta = torch.as_tensor(combo.prior.sample(8, rng))
    total = combo.ln_rho2(theta, freqs, tspan).exp()
    parts = (
        dw.ln_rho2(theta[:, : dw.ndim], freqs, tspan).exp()
        + bhb.ln_rho2(theta[:, dw.ndim :], freqs, tspan).exp()
    )
    torch.testing.assert_close(total, parts, rtol=1e-10, atol=0)


# ---------------------------------------------------------------------------------------------
# priors
# ---------------------------------------------------------------------------------------------


@pytest.mark.float64
def test_prior_densities_and_unit_cube_transform() -> None:
    prior = Prior([Uniform("a", -1.0, 3.0), BivariateNormal(("b", "c"), SMBHB_MEAN, SMBHB_COV)])
    x = prior.sample(20000, np.random.default_rng(0))
    np.testing.assert_allclose(x[:, 1:].mean(0), SMBHB_MEAN, atol=0.02)
    np.testing.assert_allclose(np.cov(x[:, 1:].T), SMBHB_COV, atol=0.01)
    assert x[:, 0].min() >= -1.0 and x[:, 0].max() <= 3.0
    lp = prior.ln_prob(torch.as_tensor(x[:50])).numpy()
    expected = -np.log(4.0) + multivariate_normal(SMBHB_MEAN, SMBHB_COV).logpdf(x[:50, 1:])
    np.testing.assert_allclose(lp, expected, rtol=1e-12)
    outside = torch.tensor([[3.5, -15.6, 4.7]])
    assert prior.ln_prob(outside).item() == -math.inf
    assert prior.support() == [(-1.0, 3.0), None, None]


# ---------------------------------------------------------------------------------------------
# grid evidence
# ---------------------------------------------------------------------------------------------


@pytest.mark.float64
def test_grid_evidence_gaussian_in_a_box() -> None:
    # Gaussian likelihood N(mu, s^2 I) in a uniform box: Z = prod_j [Phi(b) - Phi(a)] / (b - a)
    mu, s, lo, hi = np.array([0.3, -0.5]), 0.2, -2.0, 2.0
    from scipy.stats import norm

    def ln_post(theta: torch.Tensor) -> torch.Tensor:
        d = (theta - torch.as_tensor(mu)) / s
        return (
            -0.5 * (d**2).sum(-1) - 2 * math.log(s * math.sqrt(2 * math.pi)) - 2 * math.log(hi - lo)
        )

    exact = sum(
        np.log(norm.cdf((hi - m) / s) - norm.cdf((lo - m) / s)) - np.log(hi - lo) for m in mu
    )
    res = grid_evidence(ln_post, np.array([[lo, hi], [lo, hi]]))
    assert abs(res.ln_z - exact) < 1e-4
    assert res.ln_z_err < 1e-3
    with pytest.raises(ValueError, match="1-3 parameters"):
        grid_evidence(ln_post, np.zeros((4, 2)))


# ---------------------------------------------------------------------------------------------
# diagnostics
# ---------------------------------------------------------------------------------------------


def test_hellinger_distance_separates_equal_and_shifted_sets() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20000, 2)), rng.normal(size=(20000, 2))
    assert hellinger_distance(a, b) < 0.1
    # two unit Gaussians 3 sigma apart: H^2 = 1 - exp(-9/8)
    far = hellinger_distance(a, b + np.array([3.0, 0.0]))
    assert far == pytest.approx(np.sqrt(1 - np.exp(-9 / 8)), abs=0.05)


# ---------------------------------------------------------------------------------------------
# sampling and plots
# ---------------------------------------------------------------------------------------------


def test_ensembles_recover_a_gaussian_despite_a_plateau() -> None:
    from flows.pta import run_ensembles

    prior = Prior([Uniform("x", -10.0, 10.0), Uniform("y", -10.0, 10.0)])
    mean, sd = np.array([1.0, -2.0]), np.array([0.5, 0.2])

    def ln_post(theta: np.ndarray) -> np.ndarray:
        inside = np.all(np.abs(theta) <= 10.0, axis=1)
        core = -0.5 * np.sum(((theta - mean) / sd) ** 2, axis=1)
        # a flat plateau far below the peak: walkers started there stay stranded without help
        core = np.maximum(core, -60.0)
        return np.where(inside, core, -np.inf)

    res = run_ensembles(ln_post, prior, ensembles=2, seed=1)
    assert res.samples.shape[0] == 2 * 4 and res.samples.shape[2] == 2
    assert res.ln_posterior.shape == res.samples.shape[:2]
    flat = res.flat()
    np.testing.assert_allclose(flat.mean(0), mean, atol=0.05)
    np.testing.assert_allclose(flat.std(0), sd, rtol=0.1)
    assert res.ln_posterior.min() > -30.0  # nothing from the plateau survives
    assert res.thin >= 1 and res.steps >= 500


def test_production_stops_only_when_long_and_tau_has_settled() -> None:
    from flows.pta.sampling import MIN_TAUS, long_enough

    assert not long_enough(1000, 30.0, math.inf)  # the first estimate cannot have settled
    assert long_enough(1000, 30.0, 29.5)
    assert not long_enough(1000, 30.0, 24.0)  # still growing by 25%: keep sampling
    assert not long_enough(MIN_TAUS * 50 - 1, 50.0, 50.0)  # settled but too short


def test_stranded_walkers_are_detected_and_moved_to_good_ones() -> None:
    import emcee

    from flows.pta.sampling import _restart, _stranded

    rng = np.random.default_rng(0)
    ln_p = rng.normal(-10.0, 1.0, size=(50, 8))
    ln_p[:, [2, 5]] -= 20.0  # two walkers on a plateau e^-20 below the others
    bad = _stranded(ln_p, ndim=3)
    assert bad.tolist() == [False, False, True, False, False, True, False, False]
    coords = rng.normal(size=(8, 3))
    coords[bad] += 100.0
    moved = _restart(emcee.State(coords), bad, rng).coords
    np.testing.assert_array_equal(moved[~bad], coords[~bad])
    nearest = np.min(np.linalg.norm(moved[bad][:, None] - coords[~bad][None], axis=-1), axis=1)
    # next to a good walker, but jittered: exact copies would collapse the ensemble's span
    assert np.all((nearest > 0) & (nearest < 0.05))


def test_plots_write_pngs(tmp_path: Path) -> None:
    from flows.pta.plots import free_spectrum_plot, median_spectrum

    data = load_free_spectrum(_write_spectrum(tmp_path / "fs", nfreq=4), nfreqs=4)
    model = build_model("powerlaw")
    samples = np.random.default_rng(0).normal([-14.5, 3.0], [0.1, 0.3], size=(500, 2))
    med = median_spectrum(model, samples, data)
    assert med.shape == (4,) and np.all(np.diff(med) < 0)  # gamma = 3 > 0: falling spectrum
    path = free_spectrum_plot(data, {"powerlaw": med}, tmp_path / "f.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
