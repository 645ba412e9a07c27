r"""Posterior sampling of the PTA spectral models with emcee: several independent ensembles.

Each ensemble starts from its own prior draws (so a chain stuck in one mode shows up as a
disagreement between ensembles) and mixes differential-evolution and stretch moves (the DE
moves jump between separated modes of the new-physics posteriors). Burn-in runs in two halves;
after each, walkers stranded on a likelihood plateau (mean ln p more than 10 + D below the
ensemble median: a posterior-mass ratio below e^-10 at any sensible D) are restarted from the
positions of randomly chosen good walkers. Such strays would otherwise pollute the harmonic-mean
evidence, whose terms are largest exactly where the posterior is smallest. Production samples
are thinned by up to half the integrated autocorrelation time; walkers still stranded after
production are dropped. All of this is reported in :class:`ChainResult`.

Each ensemble is returned as ``walker_groups`` chains, each interleaving a group of walkers
step by step, in sampling order: (nchains = ensembles x walker_groups, nsamples, ndim), the
layout flows.posterior.evidence expects (contiguous blocks = consecutive steps).

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

__all__ = ["ChainResult", "default_steps", "long_enough", "run_ensembles"]


def default_steps(ndim: int) -> tuple[int, int]:
    """(burn-in, maximum production) steps per ensemble: longer for more parameters.

    The production run stops earlier once it is MIN_TAUS integrated autocorrelation times long
    and the estimate of tau changed by less than TAU_SETTLED since the previous check
    (checked every CHUNK steps after the first MIN_PRODUCTION).
    """
    return 300 + 100 * ndim, 800 + 600 * ndim


MIN_TAUS = 25
TAU_SETTLED = 0.05  # relative change of the tau estimate between checks (emcee's advice)
MIN_PRODUCTION = 500
CHUNK = 250


def long_enough(steps: int, tau: float, tau_before: float) -> bool:
    """Whether a production run of ``steps`` can stop: MIN_TAUS autocorrelation times long, by
    an estimate of tau that has settled (short chains underestimate tau)."""
    return steps >= MIN_TAUS * tau and abs(tau - tau_before) < TAU_SETTLED * tau


@dataclass
class ChainResult:
    """Burnt-in, thinned posterior samples and what was done to get them.

    Attributes:
        samples: (nchains, nsamples, ndim), groups of interleaved walkers as chains.
        ln_posterior: (nchains, nsamples).
        ensembles: independent emcee ensembles; walkers: walkers per ensemble.
        burn: burn-in steps (discarded); steps: production steps (the longest ensemble);
        thin: thinning factor.
        tau: max integrated autocorrelation time (steps) of the production run per ensemble.
        acceptance: mean production acceptance fraction per ensemble.
        restarted: walkers restarted during burn-in; dropped: walkers dropped after production.
        ensemble_means: (ensembles, ndim) posterior mean per ensemble (a mixing check).
        evaluations: log-posterior evaluations made.
    """

    samples: np.ndarray
    ln_posterior: np.ndarray
    ensembles: int
    walkers: int
    burn: int
    steps: int
    thin: int
    tau: list[float]
    acceptance: list[float]
    restarted: int
    dropped: int
    ensemble_means: np.ndarray
    evaluations: int
    warnings: list[str] = field(default_factory=list)

    def flat(self) -> np.ndarray:
        return self.samples.reshape(-1, self.samples.shape[-1])

    def summary(self) -> dict:
        return {
            "ensembles": self.ensembles,
            "walkers": self.walkers,
            "burn": self.burn,
            "steps": self.steps,
            "thin": self.thin,
            "tau": [round(t, 1) for t in self.tau],
            "acceptance": [round(a, 3) for a in self.acceptance],
            "restarted_walkers": self.restarted,
            "dropped_walkers": self.dropped,
            "samples": int(self.samples.shape[0] * self.samples.shape[1]),
            "evaluations": self.evaluations,
        }


def _stranded(ln_p: np.ndarray, ndim: int) -> np.ndarray:
    """Walkers whose mean ln p (over the given steps, axis 0) sits far below the median."""
    means = np.mean(np.where(np.isfinite(ln_p), ln_p, -1e300), axis=0)
    return means < np.median(means) - (10.0 + ndim)


def _restart(
    state: emcee.State, bad: np.ndarray, rng: np.random.Generator
) -> emcee.State:
    coords = state.coords.copy()
    good = np.flatnonzero(~bad)
    spread = coords[good].std(axis=0) + 1e-12
    for i in np.flatnonzero(bad):
        coords[i] = coords[rng.choice(good)] + 1e-3 * spread * rng.standard_normal(coords.shape[1])
    return emcee.State(coords, random_state=state.random_state)


def run_ensembles(
    ln_posterior: Callable[[np.ndarray], np.ndarray],
    prior: Prior,
    *,
    ensembles: int = 2,
    walkers: int | None = None,
    burn: int | None = None,
    steps: int | None = None,
    thin: int | None = None,
    max_samples: int = 12000,
    walker_groups: int = 4,
    seed: int = 0,
    progress: bool = False,
) -> ChainResult:
    """Run ``ensembles`` independent emcee ensembles on a batched log posterior.

    Arguments:
        ln_posterior: theta (B, D) float64 array -> (B,) array, -inf outside the prior.
        prior: the model's prior (initial walkers are drawn from it).
        ensembles: independent ensembles (>= 1; >= 2 gives the between-ensemble check).
        walkers: walkers per ensemble (default max(32, 8 D), made even).
        burn: burn-in steps (default :func:`default_steps`).
        steps: production steps; default: adaptive, stop at MIN_TAUS autocorrelation times
            (at least MIN_PRODUCTION, at most the :func:`default_steps` maximum).
        thin: keep every ``thin``-th production step (default: round(tau / 2), lowered so
            that about ``max_samples`` samples are kept when the chains are long in tau; the
            evidence's block error model takes care of the remaining autocorrelation).
        max_samples: target number of samples for the default thinning.
        walker_groups: chains returned per ensemble; each interleaves a group of walkers
            step by step.
        seed: seeds the initial walkers and the moves.
        progress: emcee's own progress bar.
    """
    ndim = prior.ndim
    default_burn, default_prod = default_steps(ndim)
    burn = default_burn if burn is None else burn
    if ensembles < 1:
        raise ValueError(f"ensembles must be >= 1; got {ensembles}")
    walkers = walkers or max(32, 8 * ndim)
    walkers += walkers % 2
    if walkers < 2 * ndim:
        raise ValueError(f"walkers must be >= 2 * ndim = {2 * ndim}; got {walkers}")
    if walker_groups < 1:
        raise ValueError(f"walker_groups must be >= 1; got {walker_groups}")
    if (steps is not None and steps < 50) or burn < 0:
        raise ValueError(f"need steps >= 50 and burn >= 0; got steps={steps}, burn={burn}")
    adaptive = steps is None
    steps = default_prod if steps is None else steps
    moves = [
        (emcee.moves.DEMove(), 0.7),
        (emcee.moves.DESnookerMove(), 0.1),
        (emcee.moves.StretchMove(), 0.2),
    ]
    kept, kept_lp, taus, accs = [], [], [], []
    restarted = dropped = 0
    produced: list[int] = []
    for e in range(ensembles):
        rng = np.random.default_rng([seed, e])
        start = prior.sample(walkers, rng)
        sampler = emcee.EnsembleSampler(walkers, ndim, ln_posterior, moves=moves, vectorize=True)
        sampler.random_state = np.random.RandomState(int(rng.integers(2**31))).get_state()
        state = emcee.State(start, random_state=sampler.random_state)
        for half in (burn // 2, burn - burn // 2):
            if half == 0:
                continue
            sampler.reset()
            state = sampler.run_mcmc(state, half, progress=progress)
            bad = _stranded(sampler.get_log_prob()[-max(1, half // 5) :], ndim)
            if bad.any() and not bad.all():
                restarted += int(bad.sum())
                state = _restart(state, bad, rng)
        sampler.reset()
        if adaptive:
            done = sampler.run_mcmc(state, min(MIN_PRODUCTION, steps), progress=progress)
            tau_before = math.inf
            while sampler.iteration < steps:
                tau_now = np.max(emcee.autocorr.integrated_time(sampler.get_chain(), tol=0))
                if long_enough(sampler.iteration, tau_now, tau_before):
                    break
                tau_before = tau_now
                more = min(CHUNK, steps - sampler.iteration)
                done = sampler.run_mcmc(done, more, progress=progress)
        else:
            sampler.run_mcmc(state, steps, progress=progress)
        chain = sampler.get_chain()  # (production steps, walkers, ndim)
        lp = sampler.get_log_prob()
        produced.append(sampler.iteration)
        bad = _stranded(lp[sampler.iteration // 2 :], ndim)
        dropped += int(bad.sum())
        kept.append(chain[:, ~bad])
        kept_lp.append(lp[:, ~bad])
        taus.append(float(np.max(emcee.autocorr.integrated_time(chain[:, ~bad], tol=0))))
        accs.append(float(np.mean(sampler.acceptance_fraction)))
    tau_max = max(taus)
    if thin is None:
        total = sum(k.shape[0] * k.shape[1] for k in kept)
        thin_used = max(1, min(int(round(tau_max / 2)), math.ceil(total / max_samples)))
    else:
        thin_used = thin
    chains_out, lps_out = [], []
    for chain, lp in zip(kept, kept_lp):
        chain, lp = chain[::thin_used], lp[::thin_used]
        # interleave groups of walkers step by step: contiguous blocks of a chain are then
        # consecutive steps, the replicates the evidence's block error model needs
        for cols in np.array_split(np.arange(chain.shape[1]), walker_groups):
            chains_out.append(chain[:, cols].reshape(-1, ndim))
            lps_out.append(lp[:, cols].reshape(-1))
    n_min = min(len(c) for c in chains_out)
    samples = np.stack([c[:n_min] for c in chains_out])
    ln_post = np.stack([c[:n_min] for c in lps_out])
    warnings = []
    if not math.isfinite(tau_max) or min(produced) < 20 * tau_max:
        warnings.append(
            f"production run is short: {min(produced)} steps vs tau = {tau_max:.0f} "
            "(want >= 20 tau)"
        )
    if dropped:
        warnings.append(f"{dropped} stranded walkers dropped after production")
    return ChainResult(
        samples=samples,
        ln_posterior=ln_post,
        ensembles=ensembles,
        walkers=walkers,
        burn=burn,
        steps=max(produced),
        thin=int(thin_used),
        tau=taus,
        acceptance=accs,
        restarted=restarted,
        dropped=dropped,
        ensemble_means=np.stack([k.reshape(-1, ndim).mean(0) for k in kept]),
        evaluations=walkers * (ensembles * burn + sum(produced)),
        warnings=warnings,
    )
