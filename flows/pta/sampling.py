r"""Posterior sampling of the PTA spectral models with emcee: several independent ensembles.

Each ensemble starts from its own prior draws (so a chain stuck in one mode shows up as a
disagreement between ensembles), mixes differential-evolution and stretch moves (the DE moves
jump between separated modes of the new-physics posteriors), and is cut after a burn-in and
thinned by the integrated autocorrelation time, both reported. The walkers of every ensemble
are returned as chains in sampling order: (nchains = ensembles x walkers, nsamples, ndim),
the layout flows.posterior.evidence expects (contiguous blocks are its error replicates).

References:
    D. Foreman-Mackey, D. W. Hogg, D. Lang, J. Goodman, "emcee: The MCMC Hammer",
    arXiv:1202.3665.
    C. J. F. ter Braak, J. A. Vrugt, "Differential Evolution Markov Chain with snooker
    updater and fewer chains", Stat. Comput. 18 (2008) 435.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import emcee
import numpy as np

from .priors import Prior

__all__ = ["ChainResult", "run_ensembles"]


@dataclass
class ChainResult:
    """Burnt-in, thinned posterior samples and what was done to get them.

    Attributes:
        samples: (nchains, nsamples, ndim), walkers of every ensemble as chains.
        ln_posterior: (nchains, nsamples).
        ensembles: number of independent emcee ensembles; walkers: walkers per ensemble.
        steps: steps per ensemble; burn: steps dropped; thin: thinning factor.
        tau: max integrated autocorrelation time (steps) per ensemble.
        acceptance: mean acceptance fraction per ensemble.
        ensemble_means: (ensembles, ndim) posterior mean per ensemble (a mixing check).
        evaluations: likelihood evaluations made.
    """

    samples: np.ndarray
    ln_posterior: np.ndarray
    ensembles: int
    walkers: int
    steps: int
    burn: int
    thin: int
    tau: list[float]
    acceptance: list[float]
    ensemble_means: np.ndarray
    evaluations: int
    warnings: list[str] = field(default_factory=list)

    def flat(self) -> np.ndarray:
        return self.samples.reshape(-1, self.samples.shape[-1])

    def summary(self) -> dict:
        return {
            "ensembles": self.ensembles,
            "walkers": self.walkers,
            "steps": self.steps,
            "burn": self.burn,
            "thin": self.thin,
            "tau": [round(t, 1) for t in self.tau],
            "acceptance": [round(a, 3) for a in self.acceptance],
            "samples": int(self.samples.shape[0] * self.samples.shape[1]),
            "evaluations": self.evaluations,
        }


def _initial_walkers(
    ln_posterior: Callable[[np.ndarray], np.ndarray],
    prior: Prior,
    walkers: int,
    rng: np.random.Generator,
) -> np.ndarray:
    # Start from the best of a handful of prior draws per walker, keeping the spread of the
    # prior: the ensemble starts near the bulk of the posterior without collapsing onto one
    # point (an overdispersed start, as Gelman-Rubin diagnostics assume).
    draws = prior.sample(walkers * 8, rng)
    lp = ln_posterior(draws)
    order = np.argsort(-np.where(np.isfinite(lp), lp, -np.inf))
    chosen = draws[order[: walkers * 4]]
    return chosen[rng.choice(len(chosen), size=walkers, replace=False)]


def run_ensembles(
    ln_posterior: Callable[[np.ndarray], np.ndarray],
    prior: Prior,
    *,
    ensembles: int = 4,
    walkers: int | None = None,
    steps: int = 3000,
    burn: int | None = None,
    thin: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> ChainResult:
    """Run ``ensembles`` independent emcee ensembles on a batched log posterior.

    Arguments:
        ln_posterior: theta (B, D) float64 array -> (B,) array, -inf outside the prior.
        prior: the model's prior (initial walkers are drawn from it).
        ensembles: independent ensembles (>= 2 for the between-ensemble check).
        walkers: walkers per ensemble (default max(16, 4 D), even).
        steps: steps per ensemble.
        burn: steps to drop (default max(steps / 4, 5 tau), at most steps / 2).
        thin: keep every ``thin``-th step (default max(1, round(tau / 2))).
        seed: seeds the initial walkers and the moves.
        progress: emcee's own progress bar.
    """
    ndim = prior.ndim
    if ensembles < 1:
        raise ValueError(f"ensembles must be >= 1; got {ensembles}")
    walkers = walkers or max(16, 4 * ndim)
    walkers += walkers % 2
    if walkers < 2 * ndim:
        raise ValueError(f"walkers must be >= 2 * ndim = {2 * ndim}; got {walkers}")
    if steps < 50:
        raise ValueError(f"steps must be >= 50; got {steps}")
    moves = [
        (emcee.moves.DEMove(), 0.7),
        (emcee.moves.DESnookerMove(), 0.1),
        (emcee.moves.StretchMove(), 0.2),
    ]
    chains, lps, taus, accs = [], [], [], []
    for e in range(ensembles):
        rng = np.random.default_rng([seed, e])
        start = _initial_walkers(ln_posterior, prior, walkers, rng)
        sampler = emcee.EnsembleSampler(walkers, ndim, ln_posterior, moves=moves, vectorize=True)
        sampler.random_state = np.random.RandomState(rng.integers(2**31)).get_state()
        sampler.run_mcmc(start, steps, progress=progress)
        chain = sampler.get_chain()  # (steps, walkers, ndim)
        tail = chain[steps // 4 :]
        tau = float(np.max(emcee.autocorr.integrated_time(tail, tol=0)))
        chains.append(chain)
        lps.append(sampler.get_log_prob())
        taus.append(tau)
        accs.append(float(np.mean(sampler.acceptance_fraction)))
    tau_max = max(taus)
    burn_used = burn if burn is not None else int(min(steps / 2, max(steps / 4, 5 * tau_max)))
    thin_used = thin if thin is not None else max(1, int(round(tau_max / 2)))
    if not 0 <= burn_used < steps:
        raise ValueError(f"burn must lie in [0, steps={steps}); got {burn_used}")
    kept = [c[burn_used::thin_used].transpose(1, 0, 2) for c in chains]
    kept_lp = [lp[burn_used::thin_used].T for lp in lps]
    samples = np.concatenate(kept, axis=0)
    ln_post = np.concatenate(kept_lp, axis=0)
    warnings = []
    if steps - burn_used < 20 * tau_max:
        warnings.append(
            f"chains are short: {steps - burn_used} steps after burn-in vs tau = {tau_max:.0f} "
            "(want >= 20 tau)"
        )
    if not math.isfinite(tau_max):
        warnings.append("autocorrelation time is not finite")
    return ChainResult(
        samples=samples,
        ln_posterior=ln_post,
        ensembles=ensembles,
        walkers=walkers,
        steps=steps,
        burn=burn_used,
        thin=thin_used,
        tau=taus,
        acceptance=accs,
        ensemble_means=np.stack([k.reshape(-1, ndim).mean(0) for k in kept]),
        evaluations=ensembles * walkers * (steps + 8),
        warnings=warnings,
    )
