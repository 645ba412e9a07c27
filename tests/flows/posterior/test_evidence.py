"""Evidence with known answers: exact Gaussians, MCMC chains, Bayes factors, calibration."""

from __future__ import annotations

import json
import math

import emcee
import numpy as np
import pytest
from scipy.special import gammaln
from scipy.stats import norm

from flows.posterior import EvidenceResult, bayes_factor, evidence
from flows.posterior.estimator import (
    FlowTerms,
    choose_temperature,
    harmonic_mean_from_blocks,
    integrated_time,
)

SMALL_FLOW = {"epochs": 4, "patience": 2, "transforms": 2, "hidden": (32, 32)}


def _gaussian_problem(d: int, nchains: int, nsamples: int, seed: int, offset: float = 0.0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    cov = a @ a.T / d + 0.5 * np.eye(d)
    scales = np.exp(rng.uniform(-3, 3, size=d))  # parameters on very different scales
    cov = cov * np.outer(scales, scales)
    x = rng.multivariate_normal(np.zeros(d), cov, size=(nchains, nsamples))
    precision = np.linalg.inv(cov)

    def ln_post(t: np.ndarray) -> np.ndarray:
        return -0.5 * np.einsum("...i,ij,...j->...", t, precision, t) + offset

    truth = 0.5 * d * math.log(2 * math.pi) + 0.5 * np.linalg.slogdet(cov)[1] + offset
    return x, ln_post(x), ln_post, truth


@pytest.mark.parametrize("d", [2, 10, 22])
def test_correlated_gaussian_from_exact_samples(d: int) -> None:
    x, lp, ln_post, truth = _gaussian_problem(d, nchains=4, nsamples=1500, seed=d)
    result = evidence(x, lp, progress=False, fit_options=SMALL_FLOW)
    assert result.estimator == "learned harmonic mean"
    assert 0 < result.ln_z_err < 0.05
    assert abs(result.ln_z - truth) < 3 * result.ln_z_err + 1e-3
    assert result.warnings == []
    assert result.diagnostics["n_inference_rows"] == 2 * 1500
    assert set(result.diagnostics) >= {"ess_per_chain", "log_term_std", "held_out_nll"}


@pytest.mark.float64
@pytest.mark.parametrize("offset", [-300.0, 300.0, 1e4])
def test_large_ln_z_stays_finite_and_exact(offset: float) -> None:
    x, lp, ln_post, truth = _gaussian_problem(3, nchains=2, nsamples=1500, seed=1, offset=offset)
    zero_flat = lambda t: np.zeros(len(t))  # noqa: E731
    result = evidence(
        x, lp, ln_likelihood=ln_post, ln_prior=zero_flat, progress=False, fit_options=SMALL_FLOW
    )
    assert math.isfinite(result.ln_z) and math.isfinite(result.importance.ln_z)
    assert abs(result.ln_z - truth) < 3 * result.ln_z_err + 1e-3
    assert abs(result.importance.ln_z - truth) < 3 * result.importance.ln_z_err + 1e-3
    assert result.agree is True


def _ar1_chains(nchains: int, n: int, phi: float, rng: np.random.Generator) -> np.ndarray:
    """Standard-normal AR(1) chains in 2-D: autocorrelation time (1 + phi) / (1 - phi)."""
    eps = rng.normal(size=(nchains, n, 2)) * math.sqrt(1 - phi**2)
    x = np.empty_like(eps)
    x[:, 0] = rng.normal(size=(nchains, 2))
    for t in range(1, n):
        x[:, t] = phi * x[:, t - 1] + eps[:, t]
    return x


def test_error_is_calibrated_on_autocorrelated_chains() -> None:
    """Over repeated chains the z-scores spread like N(0, 1): not 0.1 (too wide) nor 5."""
    rng = np.random.default_rng(0)
    truth = math.log(2 * math.pi)
    z, errors, naive = [], [], []
    for seed in range(40):
        x = _ar1_chains(6, 1200, phi=0.9, rng=rng)  # tau = 19
        lp = -0.5 * (x**2).sum(-1)
        result = evidence(
            x, lp, temperature=0.8, progress=False, seed=seed, fit_options={"epochs": 0}
        )
        z.append((result.ln_z - truth) / result.ln_z_err)
        errors.append(result.ln_z_err)
        terms = result.flow.log_prob(x.reshape(-1, 2), 0.8).numpy() - lp.ravel()
        w = np.exp(terms - terms.max())
        naive.append(w.std() / w.mean() / math.sqrt(len(w) / 2))
        assert 10 < result.diagnostics["autocorrelation_time"] < 40
    z = np.asarray(z)
    assert 0.65 < z.std() < 1.5
    assert abs(z.mean()) < 0.6
    # per-sample errors that ignore the autocorrelation are ~sqrt(tau) ~ 4x too small
    assert np.mean(errors) > 2.5 * np.mean(naive)


@pytest.mark.slow
def test_error_is_calibrated_with_trained_flows_in_10d() -> None:
    z = []
    for seed in range(30):
        x, lp, _, truth = _gaussian_problem(10, nchains=4, nsamples=2000, seed=100 + seed)
        result = evidence(x, lp, progress=False, seed=seed, fit_options={"epochs": 20})
        z.append((result.ln_z - truth) / result.ln_z_err)
    assert 0.6 < np.std(z) < 1.6 and abs(np.mean(z)) < 0.7


def _emcee_chains(ln_post, p0: np.ndarray, steps: int, seed: int):
    np.random.seed(seed)
    sampler = emcee.EnsembleSampler(len(p0), p0.shape[1], ln_post, vectorize=True)
    sampler.run_mcmc(p0, steps + 300)
    x = sampler.get_chain(discard=300).transpose(1, 0, 2)
    return x, sampler.get_log_prob(discard=300).T


def test_gaussian_likelihood_in_box_prior_from_mcmc() -> None:
    """The box cuts the likelihood (mu_0 = 0.4 near the edge 0): needs the logit map."""
    d, mu, s, lo, hi = 2, np.array([0.4, 3.0]), 1.0, 0.0, 10.0

    def ln_like(t):
        return -0.5 * ((t - mu) ** 2).sum(-1) / s**2 - d * math.log(math.sqrt(2 * math.pi) * s)

    def ln_prior(t):
        inside = ((t > lo) & (t < hi)).all(-1)
        return np.where(inside, -d * math.log(hi - lo), -np.inf)

    truth = np.log(norm.cdf((hi - mu) / s) - norm.cdf((lo - mu) / s)).sum() - d * math.log(hi - lo)
    p0 = np.clip(mu + 0.1 * np.random.default_rng(0).normal(size=(16, d)), 0.01, 9.9)
    x, lp = _emcee_chains(lambda t: ln_like(t) + ln_prior(t), p0, 1500, seed=0)
    result = evidence(
        x,
        lp,
        bounds=[(lo, hi)] * d,
        ln_likelihood=ln_like,
        ln_prior=ln_prior,
        progress=False,
        fit_options={"epochs": 10, "patience": 3, "transforms": 2, "hidden": (32, 32)},
    )
    assert abs(result.ln_z - truth) < 3 * result.ln_z_err + 2e-3
    assert result.ln_z_err < 0.05
    assert abs(result.importance.ln_z - truth) < 3 * result.importance.ln_z_err + 2e-3
    assert result.agree is True


def test_normal_gamma_model_from_mcmc() -> None:
    rng = np.random.default_rng(3)
    n, mu0, tau0, a0, b0 = 20, 0.0, 1.0, 2.0, 2.0
    data = rng.normal(1.0, 2.0, size=n)
    xbar, s2 = data.mean(), data.var()
    tau_n, a_n = tau0 + n, a0 + n / 2
    b_n = b0 + n * s2 / 2 + tau0 * n * (xbar - mu0) ** 2 / (2 * (tau0 + n))
    truth = (
        gammaln(a_n)
        - gammaln(a0)
        + a0 * math.log(b0)
        - a_n * math.log(b_n)
        + 0.5 * math.log(tau0 / tau_n)
        - n / 2 * math.log(2 * math.pi)
    )

    def ln_post(t):
        m, tau = t[:, 0], t[:, 1]
        ok = tau > 0
        tau = np.where(ok, tau, 1.0)
        ll = 0.5 * n * np.log(tau / (2 * np.pi)) - 0.5 * tau * ((data - m[:, None]) ** 2).sum(-1)
        lpm = 0.5 * np.log(tau0 * tau / (2 * np.pi)) - 0.5 * tau0 * tau * (m - mu0) ** 2
        lpt = a0 * math.log(b0) - gammaln(a0) + (a0 - 1) * np.log(tau) - b0 * tau
        return np.where(ok, ll + lpm + lpt, -np.inf)

    p0 = np.column_stack([xbar + 0.1 * rng.normal(size=16), 0.25 + 0.01 * rng.uniform(size=16)])
    x, lp = _emcee_chains(ln_post, p0, 1500, seed=1)
    result = evidence(
        x,
        lp,
        bounds=[None, (0.0, None)],
        progress=False,
        fit_options={"epochs": 10, "patience": 3, "transforms": 2, "hidden": (32, 32)},
    )
    assert abs(result.ln_z - truth) < 3 * result.ln_z_err + 2e-3
    assert result.ln_z_err < 0.05


def test_nested_model_bayes_factor_matches_closed_form() -> None:
    """mu = 0 vs mu ~ N(0, s^2) (and two prior widths) for n Gaussian data, known sigma."""
    rng = np.random.default_rng(5)
    n, sigma = 30, 1.0
    data = rng.normal(0.3, sigma, size=n)
    xbar = data.mean()

    def fit_model(s: float) -> EvidenceResult:
        post_var = 1.0 / (n / sigma**2 + 1.0 / s**2)
        post_mean = post_var * data.sum() / sigma**2
        mu = rng.normal(post_mean, math.sqrt(post_var), size=(4, 1500, 1))
        ln_like = norm.logpdf(data, mu, sigma).sum(-1)
        return evidence(
            mu, ln_like + norm.logpdf(mu[..., 0], 0, s), progress=False, fit_options=SMALL_FLOW
        )

    wide, narrow = fit_model(2.0), fit_model(0.5)
    point_null = EvidenceResult(
        ln_z=float(norm.logpdf(data, 0.0, sigma).sum()),
        ln_z_err=0.0,
        estimator="exact",
        temperature=1.0,
        diagnostics={},
    )
    se = sigma / math.sqrt(n)
    for alt, s in ((wide, 2.0), (narrow, 0.5)):
        ln_b, err = bayes_factor(point_null, alt)
        exact = norm.logpdf(xbar, 0, se) - norm.logpdf(xbar, 0, math.sqrt(s**2 + se**2))
        assert err == pytest.approx(alt.ln_z_err)
        assert abs(ln_b - exact) < 3 * err + 1e-3
    ln_b, err = bayes_factor(narrow, wide)
    exact = norm.logpdf(xbar, 0, math.hypot(0.5, se)) - norm.logpdf(xbar, 0, math.hypot(2.0, se))
    assert err == pytest.approx(math.hypot(narrow.ln_z_err, wide.ln_z_err))
    assert abs(ln_b - exact) < 3 * err + 1e-3


def test_wrong_ln_posterior_is_flagged_not_silent() -> None:
    """ln_posterior of another density than the samples': the two estimators disagree."""
    x, _, ln_post, _ = _gaussian_problem(2, nchains=4, nsamples=1000, seed=7)
    wrong = lambda t: 0.5 * ln_post(t)  # noqa: E731
    result = evidence(
        x,
        wrong(x),
        ln_likelihood=wrong,
        ln_prior=lambda t: np.zeros(len(t)),
        progress=False,
        fit_options=SMALL_FLOW,
    )
    assert result.agree is False
    assert any("disagree" in w for w in result.warnings)


def test_short_correlated_chains_warn_about_effective_samples() -> None:
    x = _ar1_chains(4, 200, phi=0.97, rng=np.random.default_rng(0))
    result = evidence(x, -0.5 * (x**2).sum(-1), progress=False, fit_options={"epochs": 0})
    assert any("effective samples" in w for w in result.warnings)
    assert min(result.diagnostics["ess_per_chain"]) < 30


def test_temperature_rule_and_override() -> None:
    x, lp, _, _ = _gaussian_problem(3, nchains=2, nsamples=800, seed=2)
    auto = evidence(x, lp, progress=False, fit_options={"epochs": 0})
    criterion = auto.diagnostics["temperature_criterion"]
    best = float(min(criterion, key=lambda t: criterion[t]))
    assert auto.temperature == best == max(float(t) for t in criterion)
    assert auto.diagnostics["flow_mismatch"] < 0.15
    assert not any("misfits" in w for w in auto.warnings)
    fixed = evidence(x, lp, temperature=0.6, progress=False, fit_options={"epochs": 0})
    assert fixed.temperature == 0.6 and fixed.diagnostics["temperature_criterion"] == {}
    assert abs(fixed.ln_z - auto.ln_z) < 3 * math.hypot(fixed.ln_z_err, auto.ln_z_err)
    # the dictionary is JSON-ready
    json.dumps(auto.as_dict())


@pytest.mark.parametrize("d", [2, 16])
def test_temperature_rule_and_flow_mismatch_on_known_terms(d: int) -> None:
    """Perfect flow of a Gaussian: the largest T and zero mismatch; ln p~ off the flow by a
    spread of 0.3 sqrt(d) nats: the mismatch reads 0.3 per sqrt(d)."""
    rng = np.random.default_rng(d)
    terms = FlowTerms(rng.chisquare(d, size=4000), np.zeros(4000), d)
    exact = terms.log_prob(1.0) + 3.0  # a perfect flow: ln q - ln p~ is one constant
    perfect = choose_temperature(terms, exact)
    assert perfect.temperature == 0.95 and perfect.mismatch < 1e-9
    misfit = choose_temperature(terms, exact + rng.normal(0.0, 0.3 * math.sqrt(d), size=4000))
    assert misfit.mismatch == pytest.approx(0.3, rel=0.1)


def test_curved_posterior_with_a_gaussian_flow_warns_of_the_misfit() -> None:
    """A banana fitted by the whitened Gaussian alone (epochs 0): the misfit is measured and
    the user is warned, and the estimate still lands near the exact ln Z."""
    rng = np.random.default_rng(3)
    y = rng.normal(size=(4, 3000, 2))
    x = y.copy()
    x[..., 1] += 0.3 * (y[..., 0] ** 2 - 1.0)  # volume-preserving: ln Z = ln 2 pi
    result = evidence(x, -0.5 * (y**2).sum(-1), progress=False, fit_options={"epochs": 0})
    assert result.diagnostics["flow_mismatch"] > 0.15
    assert any("misfits the posterior" in w for w in result.warnings)
    assert abs(result.ln_z - math.log(2 * math.pi)) < 4 * result.ln_z_err


def test_seeds_matter_even_when_the_flow_stays_the_gaussian_fit() -> None:
    """8-D Gaussian, training stopped at epoch 0: the seed still picks the training chains."""
    x, lp, _, truth = _gaussian_problem(8, nchains=4, nsamples=600, seed=8)
    results = [evidence(x, lp, seed=s, progress=False, fit_options={"epochs": 0}) for s in range(4)]
    assert len({r.ln_z for r in results}) > 1
    for r in results:
        assert abs(r.ln_z - truth) < 4 * r.ln_z_err


def test_single_chain_is_split_in_time() -> None:
    x, lp, _, truth = _gaussian_problem(2, nchains=1, nsamples=3000, seed=4)
    result = evidence(x[0], lp[0], progress=False, fit_options={"epochs": 0})
    assert result.diagnostics["n_inference_rows"] == 1500
    assert result.diagnostics["n_blocks"] >= 10
    assert abs(result.ln_z - truth) < 3 * result.ln_z_err + 1e-3


def test_harmonic_mean_from_blocks_arithmetic() -> None:
    ln_rho, rel_var, n_eff = harmonic_mean_from_blocks([np.full(10, -500.0)] * 4)
    assert ln_rho == pytest.approx(-500.0) and rel_var == 0.0 and n_eff == pytest.approx(4.0)
    ln_rho, rel_var, _ = harmonic_mean_from_blocks([np.log([1.0, 1.0]), np.log([3.0, 3.0])])
    assert ln_rho == pytest.approx(math.log(2.0))
    assert rel_var == pytest.approx(((1 - 2) ** 2 + (3 - 2) ** 2) / 2 / 1 / 4)
    assert integrated_time(np.random.default_rng(0).normal(size=(4, 5000))) < 1.3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ln_posterior": np.zeros((2, 99))}, r"ln_posterior has shape \(2, 99\)"),
        ({"temperature": 1.5}, r"temperature must lie in \(0, 1\]; got 1.5"),
        ({"temperature": "hot"}, "temperature must be 'auto' or a number"),
        ({"ln_prior": np.sum}, "needs both ln_likelihood and ln_prior"),
        ({"bounds": [(0.0, 1.0), None]}, "lie on or outside the bounds"),
    ],
)
def test_bad_input_names_the_problem(kwargs: dict, message: str) -> None:
    x = np.random.default_rng(0).normal(size=(2, 100, 2))
    args = {"samples": x, "ln_posterior": -0.5 * (x**2).sum(-1), "progress": False}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        evidence(args.pop("samples"), args.pop("ln_posterior"), **args)


def test_nan_and_short_chains_rejected_with_counts() -> None:
    x = np.random.default_rng(0).normal(size=(2, 100, 2))
    lp = -0.5 * (x**2).sum(-1)
    lp[0, :3] = np.nan
    with pytest.raises(ValueError, match="3 NaN or infinite values"):
        evidence(x, lp, progress=False)
    x[1, 5, 0] = np.inf
    with pytest.raises(ValueError, match="1 rows with NaN or inf"):
        evidence(x, np.zeros((2, 100)), progress=False)
    with pytest.raises(ValueError, match="too few samples per chain: 10"):
        evidence(x[:, 10:20], np.zeros((2, 10)), progress=False)


def test_transformer_flow_evidence_with_box_bounds() -> None:
    """The transformer flow on parameter tokens gives the same known answer (truncated box)."""
    rng = np.random.default_rng(11)
    lo, hi = 0.0, 4.0
    x = rng.normal(1.0, 1.0, size=(4, 6000, 3))
    x = x[:, ((x > lo) & (x < hi)).all(-1).all(0)][:, :1200]  # rows inside the box in all chains
    lp = -0.5 * ((x - 1.0) ** 2).sum(-1)
    truth = 3 * math.log(math.sqrt(2 * math.pi) * (norm.cdf(3.0) - norm.cdf(-1.0)))
    result = evidence(
        x,
        lp,
        flow="transformer",
        bounds=[(lo, hi)] * 3,
        progress=False,
        fit_options={"epochs": 3, "transforms": 2, "width": 16, "depth": 1, "num_heads": 2},
    )
    assert result.fit.flow == "transformer"
    assert abs(result.ln_z - truth) < 3 * result.ln_z_err + 2e-3


def test_tiny_single_chain_still_finite_and_json_ready() -> None:
    x = np.random.default_rng(0).normal(size=(60, 2))
    result = evidence(x, -0.5 * (x**2).sum(-1), progress=False, fit_options={"epochs": 0})
    assert math.isfinite(result.ln_z) and math.isfinite(result.ln_z_err)
    assert result.diagnostics["n_blocks"] >= 2
    assert any("independent blocks" in w for w in result.warnings)
    assert json.loads(json.dumps(result.as_dict()))["ln_z"] == pytest.approx(result.ln_z)
