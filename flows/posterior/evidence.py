r"""Bayesian evidence from posterior samples: the learned harmonic mean with a fitted flow,
checked by flow importance sampling, with errors, diagnostics and a reliability verdict.

``evidence(samples, ln_posterior)`` splits the chains (a seeded choice of which chains train;
one chain is cut into halves and the seed picks the training half), fits a flow to the
training chains (thinned to ``max_train_rows``; weighted samples are resampled by weight),
chooses the temperature on the training chains' held-out tails, and evaluates the learned
harmonic mean on the other, inference chains only (estimator and error: ``estimator.py``).

Replicate blocks: each inference chain is cut into contiguous blocks at least ten integrated
autocorrelation times long (and at least sqrt(n) samples), so neighbouring blocks are nearly
independent.

Temperature rule (``temperature="auto"``, ``estimator.choose_temperature``): the
harmonic-mean terms are evaluated on the training chains' held-out tails (never on the
inference chains) for each T in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95). Among the T whose terms have
a light tail (Pareto k < 0.5, PSIS: finite variance) the one with the smallest relative
variance of the (weighted) estimator is used; when none has, the smallest T. For a perfect
flow and a Gaussian posterior the relative second moment is (T (2 - T))^{-d/2}, minimal at
T = 1; T is capped at 0.95 to keep the thin-tail guarantee when the flow is imperfect. When
the flow visibly misfits the posterior (held-out spread of ln q - ln p~ above 0.15 sqrt(d)
nats, ``diagnostics["flow_mismatch"]``) the error is known to under-cover, and a caution says
so: on a curved posterior T = 0.95 gave errors 1.5-2 times too small, because neither the
sample variance nor the Pareto k of a few thousand terms sees the rare large terms from where
the flow is too wide. Limiting T to 0.7 there fixed that case but moved the NANOGrav power
law 3.4 sigma off its grid value, so T is not limited (benchmarks/RESULTS.md).

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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from core.files import json_ready
from flows.posterior.diagnostics import assess, importance_findings, widened_error

if TYPE_CHECKING:  # torch and the flows load when evidence() runs, not on import (fast CLIs)
    import torch

    from flows.posterior.base import PosteriorFlow
    from flows.posterior.estimator import ImportanceResult
    from flows.posterior.fit import FitReport
    from flows.posterior.transforms import BoundsLike

__all__ = [
    "BayesFactor",
    "EvidenceResult",
    "as_chains",
    "bayes_factor",
    "evidence",
]

MIN_SAMPLES_PER_CHAIN = 20


@dataclass
class EvidenceResult:
    """ln Z with its standard error, the estimator, diagnostics, warnings and a verdict.

    ``reliable`` is False when the estimator's own diagnostics call the number meaningless
    (``unreliable_because`` lists why); ``ln_z_err`` is then widened to reflect the failure
    and ``diagnostics["ln_z_err_statistical"]`` keeps the plain error. ``importance`` holds
    the second estimator when ln_likelihood/ln_prior were given, and ``agree`` whether the
    two estimates lie within three combined standard errors (None without it). ``flow`` is
    the fitted (float64) flow, ``fit`` its report.
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
    reliable: bool = True
    unreliable_because: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (no flow, no fit history)."""
        return {
            "ln_z": json_ready(self.ln_z),
            "ln_z_err": json_ready(self.ln_z_err),
            "reliable": self.reliable,
            "unreliable_because": list(self.unreliable_because),
            "estimator": self.estimator,
            "temperature": self.temperature,
            "diagnostics": json_ready(self.diagnostics),
            "warnings": list(self.warnings),
            "importance": json_ready(self.importance._asdict()) if self.importance else None,
            "agree": self.agree,
        }


class BayesFactor(NamedTuple):
    """ln B = ln Z_a - ln Z_b and its standard error (independent estimates)."""

    ln_b: float
    ln_b_err: float


def bayes_factor(result_a: EvidenceResult, result_b: EvidenceResult) -> BayesFactor:
    """ln B_ab = ln Z_a - ln Z_b, errors added in quadrature: ``ln_b, err = bayes_factor(a, b)``."""
    return BayesFactor(
        result_a.ln_z - result_b.ln_z, math.hypot(result_a.ln_z_err, result_b.ln_z_err)
    )


def _array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def as_chains(
    samples: np.ndarray | torch.Tensor,
    ln_posterior: np.ndarray | torch.Tensor,
    weights: np.ndarray | torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate: float64 (nchains, nsamples, d) samples, (nchains, nsamples) ln p~ and weights."""
    x, lp = _array(samples), _array(ln_posterior)
    w = None if weights is None else _array(weights)
    if x.ndim == 2:
        x = x[None]
        lp = lp.reshape(1, -1) if lp.ndim == 1 else lp
        w = w.reshape(1, -1) if w is not None and w.ndim == 1 else w
    if x.ndim != 3:
        raise ValueError(
            f"samples must have shape (nsamples, ndim) or (nchains, nsamples, ndim); "
            f"got {tuple(np.shape(samples))}"
        )
    need = x.shape[:2] if np.ndim(samples) == 3 else (x.shape[1],)
    if lp.shape != x.shape[:2]:
        raise ValueError(
            f"ln_posterior has shape {tuple(np.shape(ln_posterior))} but the samples need {need}"
        )
    if w is not None:
        if w.shape != x.shape[:2]:
            raise ValueError(
                f"weights have shape {tuple(np.shape(weights))} but the samples need {need}"
            )
        if not (np.isfinite(w).all() and (w >= 0).all() and (w > 0).any()):
            raise ValueError("weights must be finite, >= 0 and not all zero")
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
    return x, lp, w


def _check_temperature(temperature: float | str) -> float | str:
    if temperature == "auto":
        return temperature
    if isinstance(temperature, str):
        raise ValueError(f"temperature must be 'auto' or a number in (0, 1]; got {temperature!r}")
    temperature = float(temperature)
    if not 0.0 < temperature <= 1.0:
        raise ValueError(f"temperature must lie in (0, 1]; got {temperature}")
    return temperature


def _split(nchains: int, nsamples: int, train_fraction: float, seed: int):
    """Index expressions (train, inference) over (chain, sample): whole chains when there are
    several (which ones train is seeded), else the halves of the one chain (seeded order)."""
    rng = np.random.default_rng(seed)
    if nchains >= 2:
        n_train = min(nchains - 1, max(1, int(round(train_fraction * nchains))))
        order = np.sort(rng.permutation(nchains)[:n_train])
        inference = np.setdiff1d(np.arange(nchains), order)
        return (order, slice(None)), (inference, slice(None))
    cut = int(round(train_fraction * nsamples))
    first, second = (slice(None), slice(0, cut)), (slice(None), slice(cut, None))
    if rng.random() < 0.5:
        return first, second
    cut = nsamples - cut
    return (slice(None), slice(cut, None)), (slice(None), slice(0, cut))


def _resample(rows: np.ndarray, weights: np.ndarray | None, rng: np.random.Generator):
    """Systematic resampling of weighted rows to as many equally weighted rows."""
    if weights is None:
        return rows
    p = np.cumsum(weights) / weights.sum()
    picks = (np.arange(len(rows)) + rng.random()) / len(rows)
    return rows[np.minimum(np.searchsorted(p, picks), len(rows) - 1)]


def evidence(
    samples: np.ndarray | torch.Tensor,
    ln_posterior: np.ndarray | torch.Tensor,
    *,
    weights: np.ndarray | torch.Tensor | None = None,
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
        weights: optional (nchains, nsamples) sample weights >= 0 (multiplicities, importance
            weights); the estimator becomes the weighted ratio estimator of ``estimator.py``.
        ln_likelihood, ln_prior: optional callables on (n, ndim) float64 arrays returning (n,)
            (or on one row returning a float); with both, flow importance sampling runs too.
        temperature: "auto" (see the module docstring) or a float in (0, 1].
        flow: "spline" or "transformer". bounds: per-parameter (lo, hi) or None (box priors:
            the flow is fitted in logit space and puts no mass outside).
        train_fraction: share of the chains (or, with one chain, of its length) that trains
            the flow; the rest is used for the estimate only.
        block_length: replicate block length; default max(10 tau, sqrt(n)) per chain.
        importance_samples: flow draws for importance sampling.
        max_train_rows: the training chains are thinned evenly to at most this many rows
            for the flow fit (the estimate itself always uses every inference sample).
        seed: seeds the choice of training chains, the flow fit and the importance draws.
        progress: tqdm bar for the flow fit.
        fit_options: extra keyword arguments for :func:`fit_flow` (epochs, hidden, ...).

    Returns:
        :class:`EvidenceResult` with ln_z, ln_z_err, reliable, estimator, temperature,
        diagnostics, warnings, importance (or None), agree (or None), fit report and flow.
    """
    from flows.posterior.estimator import (
        blocks_of,
        choose_temperature,
        flow_terms,
        harmonic_mean_from_blocks,
        importance_sampling,
        integrated_time,
        pareto_k,
        split_rhat,
    )
    from flows.posterior.fit import fit_flow
    from flows.posterior.transforms import check_inside, parse_bounds

    start = time.perf_counter()
    x, lp, w = as_chains(samples, ln_posterior, weights)
    nchains, nsamples, ndim = x.shape
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction}")
    temperature = _check_temperature(temperature)
    needed = MIN_SAMPLES_PER_CHAIN * (2 if nchains == 1 else 1)
    if nsamples < needed:
        why = " (one chain is split into training and inference halves)" if nchains == 1 else ""
        raise ValueError(f"too few samples per chain: {nsamples}; need at least {needed}{why}")
    check_inside(x.reshape(-1, ndim), *parse_bounds(bounds, ndim))
    if (ln_likelihood is None) != (ln_prior is None):
        raise ValueError("importance sampling needs both ln_likelihood and ln_prior (got one)")

    train, inference = _split(nchains, nsamples, train_fraction, seed)
    x_train, lp_train, x_inf, lp_inf = x[train], lp[train], x[inference], lp[inference]
    w_train = None if w is None else w[train]
    w_inf = None if w is None else w[inference]
    # Held-out rows for early stopping and the temperature rule: the tail of every training
    # chain (contiguous, so autocorrelation does not leak the training rows into it).
    tail = max(2, int(round(0.2 * x_train.shape[1])))
    # Long MCMC runs: thin the training rows evenly (neighbours are nearly copies anyway).
    stride = max(1, math.ceil(x_train[:, :-tail, 0].size / max_train_rows))
    rng = np.random.default_rng(seed)
    fit_rows = _resample(
        x_train[:, :-tail:stride].reshape(-1, ndim),
        None if w_train is None else w_train[:, :-tail:stride].reshape(-1),
        rng,
    )
    val_rows = x_train[:, -tail::stride].reshape(-1, ndim)
    val_lp = lp_train[:, -tail::stride].reshape(-1)
    val_w = None if w_train is None else w_train[:, -tail::stride].reshape(-1)
    options = {"epochs": 200, "patience": 5}
    options.update(fit_options or {})
    fitted, report = fit_flow(
        fit_rows,
        flow=flow,
        bounds=bounds,
        validation=_resample(val_rows, val_w, rng),
        seed=seed,
        progress=progress,
        **options,
    )
    flow64 = copy.deepcopy(fitted)
    flow64.transforms.double()
    flow64.eval().requires_grad_(False)

    criterion: dict[float, float] = {}
    mismatch = math.nan
    if temperature == "auto":
        temperature, criterion, mismatch = choose_temperature(
            flow_terms(flow64, val_rows), val_lp, val_w
        )

    terms = flow_terms(flow64, x_inf.reshape(-1, ndim)).log_prob(temperature)
    terms = terms.reshape(lp_inf.shape) - lp_inf
    # The slowest of the log terms and the parameters sets the replicate block length.
    tau = max(integrated_time(terms), *(integrated_time(x_inf[..., j]) for j in range(ndim)))
    length = terms.shape[1]
    if block_length is None:
        block_length = int(max(math.ceil(10 * tau), math.ceil(math.sqrt(length))))
    block_length = int(min(max(block_length, 1), length))
    if len(terms) * (length // block_length) < 2:
        block_length = max(1, length // 2)  # at least two replicates, with a warning below
    blocks = blocks_of(terms, block_length)
    block_weights = None if w_inf is None else blocks_of(w_inf, block_length)
    ln_rho, rel_var, n_eff = harmonic_mean_from_blocks(blocks, block_weights)
    ln_z = -ln_rho - (0.5 * rel_var if math.isfinite(rel_var) else 0.0)
    ln_z_err = math.sqrt(rel_var)

    flat_w = np.ones(terms.size) if w_inf is None else w_inf.ravel()
    contribution = flat_w * np.exp(terms.ravel() - terms.max())
    kish = flat_w.sum() ** 2 / (flat_w**2).sum() / terms.size  # weight-driven ESS loss
    diagnostics: dict[str, Any] = {
        "n_chains": nchains,
        "n_samples_per_chain": nsamples,
        "ndim": ndim,
        "weighted": w is not None,
        "n_train_rows": int(len(fit_rows)),
        "train_thinning": stride,
        "n_validation_rows": int(len(val_rows)),
        "n_inference_rows": int(terms.size),
        "n_inference_chains": int(len(terms)),
        "autocorrelation_time": tau,
        "split_rhat": max(split_rhat(series) for series in (lp_inf, *x_inf.transpose(2, 0, 1))),
        "ess_per_chain": [float(length / tau * kish)] * len(terms),
        "n_blocks": len(blocks),
        "block_length": block_length,
        "n_eff_blocks": n_eff,
        "log_term_std": float(np.sqrt(np.cov(terms.ravel(), aweights=flat_w))),
        "pareto_k": pareto_k(terms.ravel()),
        "log_term_range": float(terms.max() - terms.min()),
        "max_weight_fraction": float(contribution.max() / contribution.sum()),
        "temperature": temperature,
        "temperature_criterion": {str(k): v for k, v in criterion.items()},
        "flow_mismatch": mismatch,
        "train_nll": report.train_nll,
        "held_out_nll": report.held_out_nll,
        "fit_epochs": report.epochs,
        "fit_best_epoch": report.best_epoch,
        "fit_time_s": report.time_s,
        "ln_z_err_statistical": ln_z_err,
    }
    findings = assess(diagnostics, ndim)

    importance, agree, gap = None, None, 0.0
    if ln_likelihood is not None and ln_prior is not None:
        importance = importance_sampling(flow64, ln_likelihood, ln_prior, importance_samples, seed)
        agree, more = importance_findings(ln_z, ln_z_err, importance, importance_samples)
        findings += more
        gap = abs(importance.ln_z - ln_z) if not agree else 0.0
        diagnostics["importance_ess"] = importance.ess
    unreliable = [f.text for f in findings if f.unreliable]
    if unreliable:
        ln_z_err = widened_error(ln_z_err, diagnostics, gap)
    diagnostics["time_s"] = time.perf_counter() - start
    return EvidenceResult(
        ln_z=float(ln_z),
        ln_z_err=float(ln_z_err),
        estimator="learned harmonic mean",
        temperature=float(temperature),
        diagnostics=diagnostics,
        warnings=[f.text for f in findings],
        importance=importance,
        agree=agree,
        fit=report,
        flow=flow64,
        reliable=not unreliable,
        unreliable_because=unreliable,
    )

