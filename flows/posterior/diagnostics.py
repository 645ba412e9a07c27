r"""What the learned harmonic mean's own diagnostics say about an estimate: warnings, and
whether the number means anything at all.

Each check (McEwen et al. 2021, arXiv:2111.12720, section 5: effective samples, the spread of
the log terms, the flow's held-out fit; plus agreement with flow importance sampling) gives a
warning with a severity. "caution": the estimate stands but its error may be off. "unreliable":
the estimate is meaningless as a number; the result is then marked ``reliable = False`` and
its error is widened to reflect the failure (see :func:`widened_error`).

Unreliable when: the harmonic-mean terms have a heavy tail (PSIS Pareto k above
``MAX_PARETO_K``; Vehtari et al. 2024, arXiv:1507.02646; k >= 0.5 is a caution: infinite
variance, the error is too small), the inference chains have not converged (split-R-hat of
the ln posterior or of a parameter above ``MAX_RHAT``; Gelman et al., BDA3), the log terms
spread by more than
``MAX_LOG_TERM_STD`` nats (the flow does not match the posterior), one sample carries more
than half of the estimate, fewer than ``MIN_TOTAL_ESS`` effective samples feed it, or the two
estimators disagree by more than three standard errors. The widened error is at least the
full range of the log terms (the interval any mean of them can fall in) and the gap to
importance sampling. A caution only: the flow misfits the posterior
(``estimator.choose_temperature``'s mismatch), where the error is known to under-cover.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

__all__ = ["Finding", "MIN_ESS_PER_CHAIN", "assess", "widened_error"]

MIN_ESS_PER_CHAIN = 30
CAUTION_RHAT = 1.05
MAX_RHAT = 1.2
CAUTION_PARETO_K = 0.5
MAX_PARETO_K = 0.7
MIN_TOTAL_ESS = 20
MIN_BLOCKS = 10
MAX_LOG_TERM_STD = 10.0
HEAVY_WEIGHT = 0.05
DOMINANT_WEIGHT = 0.5
MISFIT_PER_SQRT_DIM = 0.15


class Finding(NamedTuple):
    """One warning: its text and whether it makes the estimate unreliable."""

    text: str
    unreliable: bool


def assess(diag: dict[str, Any], ndim: int) -> list[Finding]:
    """Warnings from the estimator's diagnostics (see the module docstring)."""
    out = []
    rhat = diag["split_rhat"]
    if rhat > CAUTION_RHAT or not math.isfinite(rhat):
        verdict = "the chains have not converged; ln Z is meaningless" if rhat > MAX_RHAT \
            else "the chains may not have converged; run them longer"
        out.append(Finding(
            f"split R-hat {rhat:.2f} (> {CAUTION_RHAT}) across the inference chains' halves: "
            + verdict, rhat > MAX_RHAT))
    ess = min(diag["ess_per_chain"])
    total_ess = sum(diag["ess_per_chain"])
    if total_ess < MIN_TOTAL_ESS:
        out.append(Finding(
            f"only {total_ess:.0f} effective samples in all inference chains together "
            f"(< {MIN_TOTAL_ESS}): the chains have not mixed; ln Z is meaningless", True))
    elif ess < MIN_ESS_PER_CHAIN:
        out.append(Finding(
            f"only {ess:.0f} effective samples per inference chain (< {MIN_ESS_PER_CHAIN}): "
            "run longer chains; the error may be underestimated", False))
    if diag["n_blocks"] < MIN_BLOCKS:
        out.append(Finding(
            f"only {diag['n_blocks']} independent blocks for the error estimate "
            f"(< {MIN_BLOCKS}): the error itself is uncertain; use more chains or longer ones",
            False))
    gap = diag["held_out_nll"] - diag["train_nll"]
    if gap > max(0.5, 0.05 * ndim):
        out.append(Finding(
            f"the flow overfits: held-out NLL {diag['held_out_nll']:.3f} vs train "
            f"{diag['train_nll']:.3f}; use more samples or a smaller flow", False))
    if diag["log_term_std"] > MAX_LOG_TERM_STD:
        out.append(Finding(
            f"the log terms spread hugely (std {diag['log_term_std']:.1f} > "
            f"{MAX_LOG_TERM_STD:g}): the flow does not match the posterior; ln Z is unreliable",
            True))
    k = diag["pareto_k"]
    if k >= CAUTION_PARETO_K:
        out.append(Finding(
            f"the harmonic-mean terms have a heavy tail (Pareto k {k:.2f} >= "
            f"{CAUTION_PARETO_K}): "
            + ("ln Z is unreliable" if k > MAX_PARETO_K
               else "the error may be underestimated; lower the temperature"),
            k > MAX_PARETO_K))
    mismatch = diag.get("flow_mismatch", math.nan)
    if mismatch > MISFIT_PER_SQRT_DIM:
        out.append(Finding(
            f"the flow misfits the posterior (held-out spread of ln q - ln p~ {mismatch:.2f} "
            f"nats per sqrt(dim) > {MISFIT_PER_SQRT_DIM}): the error may be too small (by ~1.5x "
            "on curved posteriors); check with importance sampling (ln_likelihood and "
            "ln_prior) or a better flow fit", False))
    share = diag["max_weight_fraction"]
    if share > HEAVY_WEIGHT:
        out.append(Finding(
            f"one sample carries {100 * share:.0f}% of the estimate: heavy tails; "
            + ("ln Z is unreliable" if share > DOMINANT_WEIGHT
               else "lower the temperature or fit a better flow"),
            share > DOMINANT_WEIGHT))
    return out


def importance_findings(
    ln_z: float, ln_z_err: float, importance: Any, requested: int
) -> tuple[bool, list[Finding]]:
    """(agree, findings) comparing the harmonic mean with flow importance sampling."""
    out = []
    diff = abs(importance.ln_z - ln_z)
    sigma = math.hypot(importance.ln_z_err, ln_z_err)
    agree = bool(diff <= 3.0 * sigma)
    if not agree:
        out.append(Finding(
            f"the learned harmonic mean ({ln_z:.4f} +- {ln_z_err:.4f}) and importance sampling "
            f"({importance.ln_z:.4f} +- {importance.ln_z_err:.4f}) disagree by "
            f"{diff / max(sigma, 1e-300):.1f} sigma; do not trust either without a check", True))
    if importance.ess < 0.05 * requested:
        out.append(Finding(
            f"importance sampling has only {importance.ess:.0f} effective samples of "
            f"{requested}: the flow's tails miss posterior mass", False))
    return agree, out


def widened_error(ln_z_err: float, diag: dict[str, Any], importance_gap: float = 0.0) -> float:
    """The error of an unreliable estimate: at least the log-term range and the IS gap."""
    return max(ln_z_err, diag["log_term_range"], importance_gap)
