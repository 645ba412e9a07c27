r"""Bayesian evidence from posterior samples: learned harmonic mean and flow importance sampling.

Learned harmonic mean (McEwen et al. 2021; Polanska et al. 2024). For posterior samples
theta_i with unnormalised log posterior ln p~(theta_i) = ln L(theta_i) + ln pi(theta_i),

    rho = 1/Z = E_post[ phi(theta) / p~(theta) ]

for any normalised phi whose support lies inside the posterior's. phi is a flow fitted to the
TRAINING chains and concentrated by a temperature T < 1 (base variance T, so phi has thinner
tails than the posterior and the estimator's variance is finite); the estimate uses only the
other, INFERENCE chains. Everything is float64 and in log space (terms are shifted by their
maximum before exponentiation), so ln Z of +-300 or more is fine.

Error model: the inference chains are cut into contiguous blocks, each at least ten
integrated autocorrelation times long (and at least sqrt(n) samples), and the blocks are the
replicates: rho_hat = sum_b n_b m_b / N, Var(rho_hat) = sum_b n_b (m_b - rho_hat)^2 / N /
(n_eff - 1) with n_eff = N^2 / sum_b n_b^2. sigma(ln Z) = sigma(rho)/rho_hat, and the bias of
the logarithm of a mean is removed to second order: ln Z = -ln rho_hat - sigma^2/(2 rho_hat^2).

Temperature rule (``temperature="auto"``): for each T in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95) the
harmonic-mean terms are evaluated on the training chains' held-out tail (never on the
inference chains) and the T with the smallest relative variance of the terms (equivalently
the largest effective sample size of the estimator) is used. For a perfect flow and a Gaussian
posterior the relative second moment is (T (2 - T))^{-d/2}, minimal at T = 1; T is capped at
0.95 to keep the thin-tail guarantee when the flow is imperfect.

Flow importance sampling (second, independent estimator; needs ln_likelihood and ln_prior
callables): Z = E_q[L pi / q] with q the untempered flow, i.i.d. draws so the plain standard
error applies; ln Z = ln w_bar + sigma^2/(2 w_bar^2). The result says whether the two agree
within three combined standard errors.

References:
    J. D. McEwen, C. G. R. Wallis, M. A. Price, A. Spurio Mancini, "Machine learning assisted
    Bayesian model selection", arXiv:2111.12720.
    A. Polanska, M. A. Price, D. Piras, A. Spurio Mancini, J. D. McEwen, "Learned harmonic
    mean estimation of the Bayesian evidence with normalizing flows", arXiv:2405.05969.
    M. A. Newton, A. E. Raftery, "Approximate Bayesian inference with the weighted likelihood
    bootstrap", JRSS B 1994 (the original harmonic mean).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy.special import logsumexp

from flows.posterior.base import PosteriorFlow
from flows.posterior.fit import FitReport, fit_flow
from flows.posterior.transforms import BoundsLike, check_inside, parse_bounds

__all__ = [
    "BayesFactor",
    "EvidenceResult",
    "ImportanceResult",
    "TEMPERATURE_GRID",
    "as_chains",
    "bayes_factor",
    "evidence",
    "harmonic_mean_from_blocks",
    "integrated_time",
]

TEMPERATURE_GRID = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
MIN_SAMPLES_PER_CHAIN = 20
MIN_ESS_PER_CHAIN = 30


@dataclass
class ImportanceResult:
    """Flow importance-sampling estimate of ln Z (i.i.d. draws from the untempered flow)."""

    ln_z: float
    ln_z_err: float
    n_samples: int
    ess: float


@dataclass
class EvidenceResult:
    """ln Z with its standard error, the estimator, diagnostics and warnings.

    ``importance`` holds the second estimator when ln_likelihood/ln_prior were given, and
    ``agree`` whether the two estimates lie within three combined standard errors (None
    without it). ``flow`` is the fitted (float64) flow, ``fit`` its report.
    """

    ln_z: float
    ln_z_err: float
    estimator: str
    temperature: float
    diagnostics: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    importance: ImportanceResult | None = None
    agree: bool | None = None
    fit: FitReport | None = None
    flow: PosteriorFlow | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (no flow, no fit history)."""
        out = {
            "ln_z": _jsonable(self.ln_z),
            "ln_z_err": _jsonable(self.ln_z_err),
            "estimator": self.estimator,
            "temperature": self.temperature,
            "diagnostics": _jsonable(self.diagnostics),
            "warnings": list(self.warnings),
            "importance": asdict(self.importance) if self.importance else None,
            "agree": self.agree,
        }
        return out


class BayesFactor(NamedTuple):
    """ln B = ln Z_a - ln Z_b and its standard error (independent estimates)."""

    ln_b: float
    ln_b_err: float


def bayes_factor(result_a: EvidenceResult, result_b: EvidenceResult) -> BayesFactor:
    """ln B_ab = ln Z_a - ln Z_b, errors added in quadrature: ``ln_b, err = bayes_factor(a, b)``."""
    return BayesFactor(
        result_a.ln_z - result_b.ln_z, math.hypot(result_a.ln_z_err, result_b.ln_z_err)
    )


def as_chains(
    samples: np.ndarray | torch.Tensor, ln_posterior: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return float64 (nchains, nsamples, d) samples and (nchains, nsamples) ln p~."""
    x = np.asarray(
        samples.detach().cpu().numpy() if torch.is_tensor(samples) else samples, dtype=np.float64
    )
    lp = np.asarray(
        ln_posterior.detach().cpu().numpy() if torch.is_tensor(ln_posterior) else ln_posterior,
        dtype=np.float64,
    )
    if x.ndim == 2:
        x = x[None]
        lp = lp.reshape(1, -1) if lp.ndim == 1 else lp
    if x.ndim != 3:
        raise ValueError(
            f"samples must have shape (nsamples, ndim) or (nchains, nsamples, ndim); "
            f"got {tuple(np.shape(samples))}"
        )
    if lp.shape != x.shape[:2]:
        raise ValueError(
            f"ln_posterior has shape {tuple(np.shape(ln_posterior))} but the samples need "
            f"{x.shape[:2] if np.ndim(samples) == 3 else (x.shape[1],)}"
        )
    bad_x = ~np.isfinite(x).all(-1)
    if bad_x.any():
        raise ValueError(
            f"samples contain {int(bad_x.sum())} rows with NaN or inf (of {bad_x.size}); "
            "remove them first"
        )
    bad_lp = ~np.isfinite(lp)
    if bad_lp.any():
        raise ValueError(
            f"ln_posterior has {int(bad_lp.sum())} NaN or infinite values (of {lp.size}); "
            "a posterior sample must have a finite ln posterior"
        )
    return x, lp


def integrated_time(chains: np.ndarray) -> float:
    """Integrated autocorrelation time of (nchains, n) series (or one (n,) series).

    The autocorrelation function is averaged over the chains before Sokal's adaptive window
    (c = 5) is applied, as emcee does: far steadier than per-chain estimates.
    """
    y = np.atleast_2d(np.asarray(chains, dtype=np.float64))
    y = y - y.mean(axis=1, keepdims=True)
    n = y.shape[1]
    if n < 4 or not np.any(y):
        return 1.0
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(y, size, axis=1)
    acf = np.fft.irfft(f * np.conj(f), size, axis=1)[:, :n]
    variance = acf[:, :1]
    acf = (acf / np.where(variance > 0, variance, 1.0)).mean(axis=0)
    taus = 2.0 * np.cumsum(acf) - 1.0
    window = np.arange(n) >= 5.0 * taus
    m = int(np.argmax(window)) if window.any() else n - 1
    return float(max(taus[m], 1.0))


def harmonic_mean_from_blocks(log_terms: Sequence[np.ndarray]) -> tuple[float, float, float]:
    """(ln rho_hat, relative variance sigma^2/rho^2, n_eff) from blocks of ln(phi / p~) terms."""
    blocks = [np.asarray(b, dtype=np.float64).ravel() for b in log_terms if np.size(b)]
    shift = max(float(np.max(b)) for b in blocks)
    sizes = np.array([len(b) for b in blocks], dtype=np.float64)
    means = np.array([np.exp(logsumexp(b - shift) - math.log(len(b))) for b in blocks])
    total = sizes.sum()
    rho = float((sizes * means).sum() / total)
    n_eff = float(total**2 / (sizes**2).sum())
    if len(blocks) < 2:
        return math.log(rho) + shift, math.inf, n_eff
    var = float((sizes * (means - rho) ** 2).sum() / total / (n_eff - 1.0))
    return math.log(rho) + shift, var / rho**2, n_eff


def _blocks(terms: np.ndarray, block_length: int) -> list[np.ndarray]:
    """Cut each chain's terms into contiguous blocks (the last absorbs the remainder)."""
    out = []
    for chain in terms:
        k = max(1, len(chain) // block_length)
        edges = np.linspace(0, len(chain), k + 1).astype(int)
        out.extend(chain[a:b] for a, b in zip(edges[:-1], edges[1:]))
    return out


class _FlowTerms(NamedTuple):
    """Squared base radius and total log-Jacobian at each row: log_prob at any temperature."""

    radius2: np.ndarray
    log_det: np.ndarray
    ndim: int

    def log_prob(self, temperature: float) -> np.ndarray:
        t = float(temperature)
        return -0.5 * self.radius2 / t - 0.5 * self.ndim * math.log(2 * math.pi * t) + self.log_det


def _flow_terms(flow: PosteriorFlow, x: np.ndarray) -> _FlowTerms:
    """One float64 pass of the flow; the temperature only enters the Gaussian base term."""
    radius2, log_det = [], []
    with torch.no_grad():
        for start in range(0, len(x), 16384):
            y, ld_pre = flow.preprocess(torch.from_numpy(x[start : start + 16384]))
            z, ld = flow.transform_whitened(y.to(flow.dtype))
            radius2.append((z * z).sum(-1).double())
            log_det.append(ld.double() + ld_pre)
    return _FlowTerms(torch.cat(radius2).numpy(), torch.cat(log_det).numpy(), x.shape[1])


def _call_rows(fn: Callable, x: np.ndarray, name: str) -> np.ndarray:
    """Evaluate fn on (n, d) rows: vectorised when it returns (n,), else row by row."""
    try:
        out = np.asarray(fn(x), dtype=np.float64)
    except Exception:  # noqa: BLE001 - a scalar-only callable: fall back to one row at a time
        out = None
    if out is None or out.shape != (len(x),):
        out = np.array([float(fn(row)) for row in x], dtype=np.float64)
    if np.isnan(out).any():
        raise ValueError(f"{name} returned NaN for {int(np.isnan(out).sum())} flow samples")
    return out


def _importance(
    flow: PosteriorFlow,
    ln_likelihood: Callable,
    ln_prior: Callable,
    n: int,
    seed: int,
) -> ImportanceResult:
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        x, lq = flow.sample_and_log_prob(n, 1.0, generator=gen)
    x_np, lq_np = x.numpy(), lq.numpy()
    lw = _call_rows(ln_likelihood, x_np, "ln_likelihood") + _call_rows(ln_prior, x_np, "ln_prior")
    lw = lw - lq_np
    lw = np.where(np.isfinite(lw) | (lw > 0), lw, -np.inf)
    if not np.isfinite(lw).any():
        raise ValueError("ln_likelihood + ln_prior is -inf at every flow sample")
    shift = float(np.max(lw))
    w = np.exp(lw - shift)
    mean = float(w.mean())
    rel = float(w.var(ddof=1) / n / mean**2)
    ess = float(w.sum() ** 2 / (w * w).sum())
    return ImportanceResult(
        ln_z=math.log(mean) + shift + 0.5 * rel,
        ln_z_err=math.sqrt(rel),
        n_samples=n,
        ess=ess,
    )


def _choose_temperature(
    flow_terms: _FlowTerms, lp: np.ndarray, grid: Sequence[float]
) -> tuple[float, dict[float, float]]:
    """The grid temperature with the smallest relative variance of the harmonic-mean terms."""
    criterion = {}
    for t in grid:
        terms = flow_terms.log_prob(t) - lp
        w = np.exp(terms - terms.max())
        criterion[t] = float(w.var() / w.mean() ** 2)
    best = min(criterion, key=lambda t: (criterion[t], -t))
    return best, criterion


def evidence(
    samples: np.ndarray | torch.Tensor,
    ln_posterior: np.ndarray | torch.Tensor,
    *,
    ln_likelihood: Callable[[np.ndarray], np.ndarray] | None = None,
    ln_prior: Callable[[np.ndarray], np.ndarray] | None = None,
    temperature: float | str = "auto",
    flow: str = "spline",
    bounds: BoundsLike = None,
    train_fraction: float = 0.5,
    block_length: int | None = None,
    importance_samples: int = 20000,
    max_train_rows: int = 20000,
    seed: int = 0,
    progress: bool = True,
    fit_options: dict[str, Any] | None = None,
) -> EvidenceResult:
    """ln Z from posterior samples by the learned harmonic mean (and importance sampling).

    Arguments:
        samples: (nchains, nsamples, ndim) or (nsamples, ndim); chains must be in sampling
            order (contiguous blocks are the error replicates). emcee users pass
            ``sampler.get_chain().transpose(1, 0, 2)`` (walkers as chains).
        ln_posterior: (nchains, nsamples) or (nsamples,): ln L + ln pi (unnormalised) at each
            sample. Any constant offset moves ln Z by the same constant.
        ln_likelihood, ln_prior: optional callables on (n, ndim) float64 arrays returning (n,)
            (or on one row returning a float); with both, flow importance sampling runs too.
        temperature: "auto" (see the module docstring) or a float in (0, 1].
        flow: "spline" or "transformer". bounds: per-parameter (lo, hi) or None (box priors:
            the flow is fitted in logit space and puts no mass outside).
        train_fraction: share of the chains (or, with one chain, of its first part) that
            trains the flow; the rest is used for the estimate only.
        block_length: replicate block length; default max(10 tau, sqrt(n)) per chain.
        importance_samples: flow draws for importance sampling.
        max_train_rows: the training chains are thinned evenly to at most this many rows
            for the flow fit (the estimate itself always uses every inference sample).
        seed: seeds the flow fit and the importance draws.
        progress: tqdm bar for the flow fit.
        fit_options: extra keyword arguments for :func:`fit_flow` (epochs, hidden, ...).

    Returns:
        :class:`EvidenceResult` with ln_z, ln_z_err, estimator, temperature, diagnostics,
        warnings, importance (or None), agree (or None), fit report and the flow.
    """
    start = time.perf_counter()
    x, lp = as_chains(samples, ln_posterior)
    nchains, nsamples, ndim = x.shape
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction}")
    if temperature != "auto":
        if isinstance(temperature, str):
            raise ValueError(
                f"temperature must be 'auto' or a number in (0, 1]; got {temperature!r}"
            )
        temperature = float(temperature)
        if not 0.0 < temperature <= 1.0:
            raise ValueError(f"temperature must lie in (0, 1]; got {temperature}")
    needed = MIN_SAMPLES_PER_CHAIN * (2 if nchains == 1 else 1)
    if nsamples < needed:
        why = " (one chain is split into training and inference halves)" if nchains == 1 else ""
        raise ValueError(f"too few samples per chain: {nsamples}; need at least {needed}{why}")
    check_inside(x.reshape(-1, ndim), *parse_bounds(bounds, ndim))
    if (ln_likelihood is None) != (ln_prior is None):
        raise ValueError("importance sampling needs both ln_likelihood and ln_prior (got one)")

    # Train / inference split: whole chains when there are several, else the chain's halves.
    if nchains >= 2:
        n_train = min(nchains - 1, max(1, int(round(train_fraction * nchains))))
        x_train, lp_train = x[:n_train], lp[:n_train]
        x_inf, lp_inf = x[n_train:], lp[n_train:]
    else:
        cut = int(round(train_fraction * nsamples))
        x_train, lp_train = x[:, :cut], lp[:, :cut]
        x_inf, lp_inf = x[:, cut:], lp[:, cut:]
    # Held-out rows for early stopping and the temperature rule: the tail of every training
    # chain (contiguous, so autocorrelation does not leak the training rows into it).
    tail = max(2, int(round(0.2 * x_train.shape[1])))
    # Long MCMC runs: thin the training rows evenly (neighbours are nearly copies anyway).
    stride = max(1, math.ceil(x_train[:, :-tail, 0].size / max_train_rows))
    fit_rows = x_train[:, :-tail:stride].reshape(-1, ndim)
    val_rows = x_train[:, -tail::stride].reshape(-1, ndim)
    val_lp = lp_train[:, -tail::stride].reshape(-1)
    options = {"epochs": 200, "patience": 5}
    options.update(fit_options or {})
    fitted, report = fit_flow(
        fit_rows,
        flow=flow,
        bounds=bounds,
        validation=val_rows,
        seed=seed,
        progress=progress,
        **options,
    )
    flow64 = copy.deepcopy(fitted)
    flow64.transforms.to(torch.float64)
    flow64.eval().requires_grad_(False)

    if temperature == "auto":
        t_used, criterion = _choose_temperature(
            _flow_terms(flow64, val_rows), val_lp, TEMPERATURE_GRID
        )
    else:
        t_used, criterion = float(temperature), {}

    flat_inf = x_inf.reshape(-1, ndim)
    inference_terms = _flow_terms(flow64, flat_inf).log_prob(t_used)
    terms = (inference_terms - lp_inf.reshape(-1)).reshape(lp_inf.shape)
    # The slowest of the log terms and the parameters sets the replicate block length.
    tau = max(integrated_time(terms), *(integrated_time(x_inf[..., j]) for j in range(ndim)))
    length = terms.shape[1]
    if block_length is None:
        block_length = int(max(math.ceil(10 * tau), math.ceil(math.sqrt(length))))
    block_length = int(min(max(block_length, 1), length))
    if len(terms) * (length // block_length) < 2:
        block_length = max(1, length // 2)  # at least two replicates, with a warning below
    blocks = _blocks(terms, block_length)
    ln_rho, rel_var, n_eff = harmonic_mean_from_blocks(blocks)
    ln_z = -ln_rho - (0.5 * rel_var if math.isfinite(rel_var) else 0.0)
    ln_z_err = math.sqrt(rel_var)

    finite = terms.ravel()
    weights = np.exp(finite - finite.max())
    ess_per_chain = [length / tau] * len(terms)
    diagnostics: dict[str, Any] = {
        "n_chains": nchains,
        "n_samples_per_chain": nsamples,
        "ndim": ndim,
        "n_train_rows": int(len(fit_rows)),
        "train_thinning": stride,
        "n_validation_rows": int(len(val_rows)),
        "n_inference_rows": int(flat_inf.shape[0]),
        "n_inference_chains": int(x_inf.shape[0]),
        "autocorrelation_time": tau,
        "ess_per_chain": [float(e) for e in ess_per_chain],
        "n_blocks": len(blocks),
        "block_length": block_length,
        "n_eff_blocks": n_eff,
        "log_term_std": float(np.std(finite)),
        "log_term_range": float(finite.max() - finite.min()),
        "max_weight_fraction": float(weights.max() / weights.sum()),
        "temperature": t_used,
        "temperature_criterion": {str(k): v for k, v in criterion.items()},
        "train_nll": report.train_nll,
        "held_out_nll": report.held_out_nll,
        "fit_epochs": report.epochs,
        "fit_time_s": report.time_s,
    }
    warnings = _warnings(diagnostics, ndim)

    importance, agree = None, None
    if ln_likelihood is not None and ln_prior is not None:
        importance = _importance(flow64, ln_likelihood, ln_prior, importance_samples, seed)
        diff = abs(importance.ln_z - ln_z)
        sigma = math.hypot(importance.ln_z_err, ln_z_err)
        agree = bool(diff <= 3.0 * sigma)
        diagnostics["importance_ess"] = importance.ess
        if not agree:
            warnings.append(
                f"the learned harmonic mean ({ln_z:.4f} +- {ln_z_err:.4f}) and importance "
                f"sampling ({importance.ln_z:.4f} +- {importance.ln_z_err:.4f}) disagree by "
                f"{diff / max(sigma, 1e-300):.1f} sigma; do not trust either without a check"
            )
        if importance.ess < 0.05 * importance_samples:
            warnings.append(
                f"importance sampling has only {importance.ess:.0f} effective samples of "
                f"{importance_samples}: the flow's tails miss posterior mass"
            )
    diagnostics["time_s"] = time.perf_counter() - start
    return EvidenceResult(
        ln_z=float(ln_z),
        ln_z_err=float(ln_z_err),
        estimator="learned harmonic mean",
        temperature=t_used,
        diagnostics=diagnostics,
        warnings=warnings,
        importance=importance,
        agree=agree,
        fit=report,
        flow=flow64,
    )


def _warnings(diag: dict[str, Any], ndim: int) -> list[str]:
    out = []
    ess = min(diag["ess_per_chain"])
    if ess < MIN_ESS_PER_CHAIN:
        out.append(
            f"only {ess:.0f} effective samples per inference chain (< {MIN_ESS_PER_CHAIN}): "
            "run longer chains; the error may be underestimated"
        )
    if diag["n_blocks"] < 10:
        out.append(
            f"only {diag['n_blocks']} independent blocks for the error estimate (< 10): "
            "the error itself is uncertain; use more chains or longer ones"
        )
    gap = diag["held_out_nll"] - diag["train_nll"]
    if gap > max(0.5, 0.05 * ndim):
        out.append(
            f"the flow overfits: held-out NLL {diag['held_out_nll']:.3f} vs train "
            f"{diag['train_nll']:.3f}; use more samples or a smaller flow"
        )
    if diag["log_term_std"] > 10.0:
        out.append(
            f"the log terms spread hugely (std {diag['log_term_std']:.1f}): the flow does not "
            "match the posterior; ln Z is unreliable"
        )
    if diag["max_weight_fraction"] > 0.05:
        out.append(
            f"one sample carries {100 * diag['max_weight_fraction']:.0f}% of the estimate: "
            "heavy tails; lower the temperature or fit a better flow"
        )
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no inf / nan
    return value
