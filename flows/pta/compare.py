r"""Bayes-factor comparison of SGWB spectral models on a free spectrum: sample, fit a flow, ln Z.

For each model: emcee ensembles on the refit posterior (:mod:`flows.pta.sampling`), then
:func:`flows.posterior.evidence`, which fits a normalising flow to half of the chains and returns
the learned-harmonic-mean ln Z (McEwen et al. 2021; Polanska et al. 2024) together with an
independent flow importance-sampling estimate; for models with <= 3 parameters the brute-force
grid integral (:mod:`flows.pta.grid`) is added as ground truth. ln B = ln Z_model - ln Z_ref,
errors added in quadrature. Every warning of the sampler and of the estimator stays with its
model; an estimate its own diagnostics call meaningless is marked ``reliable = False`` (and so
is every ln B it enters).

References:
    "Normalising flows for rapid PTA model comparison" (the seed paper, 2025): flows fitted to
    MCMC posteriors of SGWB source models on NANOGrav 15-year data, evidence by the learned
    harmonic mean.
    J. D. McEwen et al., arXiv:2111.12720; A. Polanska et al., arXiv:2405.05969.
    A. Afzal et al. (NANOGrav), arXiv:2306.16219 (models, priors, Bayes factors).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from flows.posterior.evidence import evidence

from .data import FreeSpectrum
from .grid import grid_evidence
from .likelihood import ModelPosterior
from .models import SpectralModel, build_model
from .sampling import ChainResult, run_ensembles
from .store import json_ready

__all__ = ["Comparison", "ModelResult", "compare_models", "format_table", "run_model"]

@dataclass
class ModelResult:
    """Everything measured for one model (``entry()`` is its JSON-ready part)."""

    name: str
    param_names: tuple[str, ...]
    ln_z: float
    ln_z_err: float
    estimator: str
    temperature: float | None
    ln_z_is: float | None
    ln_z_is_err: float | None
    agree: bool | None
    ln_z_grid: float | None
    ln_z_grid_err: float | None
    chains: ChainResult
    times: dict[str, float]
    flow_samples: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    reliable: bool = True
    unreliable_because: list[str] = field(default_factory=list)

    def entry(self) -> dict[str, Any]:
        """The model's numbers for comparison.json (ln B is added by :class:`Comparison`)."""
        flat = self.chains.flat()
        return {
            "name": self.name,
            "ln_z": self.ln_z,
            "ln_z_err": self.ln_z_err,
            "reliable": self.reliable,
            "unreliable_because": list(self.unreliable_because),
            "estimator": self.estimator,
            "temperature": self.temperature,
            "ln_z_importance": self.ln_z_is,
            "ln_z_importance_err": self.ln_z_is_err,
            "estimators_agree": self.agree,
            "ln_z_grid": self.ln_z_grid,
            "ln_z_grid_err": self.ln_z_grid_err,
            "params": list(self.param_names),
            "posterior_mean": [float(v) for v in flat.mean(0)],
            "posterior_std": [float(v) for v in flat.std(0)],
            "sampling": self.chains.summary(),
            "times_s": {k: round(v, 2) for k, v in self.times.items()},
            "warnings": list(self.warnings),
            "diagnostics": json_ready(self.diagnostics),
        }

    @classmethod
    def from_entry(
        cls, entry: Mapping[str, Any], chains: ChainResult, flow_samples: np.ndarray | None
    ) -> ModelResult:
        """Rebuild a result saved by :meth:`entry` (with its chains) for ``--resume``."""
        return cls(
            name=entry["name"],
            param_names=tuple(entry["params"]),
            ln_z=_number(entry["ln_z"]),
            ln_z_err=_number(entry["ln_z_err"]),
            estimator=entry["estimator"],
            temperature=entry["temperature"],
            ln_z_is=entry["ln_z_importance"],
            ln_z_is_err=entry["ln_z_importance_err"],
            agree=entry["estimators_agree"],
            ln_z_grid=entry["ln_z_grid"],
            ln_z_grid_err=entry["ln_z_grid_err"],
            chains=chains,
            times=dict(entry["times_s"]),
            flow_samples=flow_samples,
            warnings=list(entry["warnings"]),
            diagnostics=dict(entry["diagnostics"]),
            reliable=bool(entry["reliable"]),
            unreliable_because=list(entry["unreliable_because"]),
        )


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


@dataclass
class Comparison:
    """Results of :func:`compare_models` with ln B against ``reference``."""

    reference: str
    results: list[ModelResult]
    nfreqs: int
    total_time: float

    def by_name(self, name: str) -> ModelResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def ln_b(self, name: str) -> tuple[float, float]:
        """ln B of ``name`` vs the reference and its error (0, 0 for the reference)."""
        if name == self.reference:
            return 0.0, 0.0
        a, b = self.by_name(name), self.by_name(self.reference)
        return a.ln_z - b.ln_z, math.hypot(a.ln_z_err, b.ln_z_err)

    def ln_b_reliable(self, name: str) -> bool:
        """ln B means something only when both of its ln Z do."""
        return self.by_name(name).reliable and self.by_name(self.reference).reliable

    @property
    def reliable(self) -> bool:
        return all(r.reliable for r in self.results)

    def as_dict(self) -> dict[str, Any]:
        models = []
        for r in self.results:
            ln_b, ln_b_err = self.ln_b(r.name)
            entry = r.entry()
            entry.update(ln_b=ln_b, ln_b_err=ln_b_err, ln_b_reliable=self.ln_b_reliable(r.name))
            models.append(entry)
        return {
            "reference": self.reference,
            "nfreqs": self.nfreqs,
            "total_time_s": round(self.total_time, 2),
            "reliable": self.reliable,
            "models": models,
        }


def _evidence(post: ModelPosterior, chains: ChainResult, seed: int, options: dict[str, Any]):
    return evidence(
        chains.samples,
        chains.ln_posterior,
        ln_likelihood=post.ln_likelihood,
        ln_prior=post.ln_prior,
        bounds=post.model.prior.support(),
        seed=seed,
        progress=False,
        **options,
    )


def _flow_samples(result: Any, n: int, seed: int) -> np.ndarray | None:
    flow = getattr(result, "flow", None)
    if flow is None:
        return None
    with torch.no_grad():
        x = flow.sample(n, generator=torch.Generator().manual_seed(seed))
    x = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    return x.astype(np.float64)


def run_model(
    model: SpectralModel,
    data: FreeSpectrum,
    *,
    steps: int | None = None,
    ensembles: int = 2,
    seed: int = 0,
    grid_max_dim: int = 3,
    evidence_options: dict[str, Any] | None = None,
    flow_samples: int = 4000,
    progress: tqdm | None = None,
) -> ModelResult:
    """Sample one model, compute its flow evidence (both estimators) and its grid evidence."""
    post = ModelPosterior(model, data)
    times: dict[str, float] = {}

    def stage(text: str) -> None:
        if progress is not None:
            progress.set_postfix_str(f"{model.name}: {text}")

    stage("sampling")
    t0 = time.perf_counter()
    chains = run_ensembles(
        post.ln_posterior, model.prior, ensembles=ensembles,
        steps=steps, seed=seed,
    )
    times["sampling"] = time.perf_counter() - t0

    stage("flow + evidence")
    t0 = time.perf_counter()
    ev = _evidence(post, chains, seed, evidence_options or {})
    times["flow_evidence"] = time.perf_counter() - t0
    imp = getattr(ev, "importance", None)

    ln_z_grid = ln_z_grid_err = None
    if model.ndim <= grid_max_dim:
        stage("grid")
        t0 = time.perf_counter()
        g = grid_evidence(post.ln_posterior, model.prior.bounds())
        ln_z_grid, ln_z_grid_err = g.ln_z, g.ln_z_err
        times["grid"] = time.perf_counter() - t0
    times["total"] = sum(times.values())
    return ModelResult(
        name=model.name,
        param_names=model.param_names,
        ln_z=float(ev.ln_z),
        ln_z_err=float(ev.ln_z_err),
        estimator=str(ev.estimator),
        temperature=getattr(ev, "temperature", None),
        ln_z_is=None if imp is None else float(imp.ln_z),
        ln_z_is_err=None if imp is None else float(imp.ln_z_err),
        agree=getattr(ev, "agree", None),
        ln_z_grid=ln_z_grid,
        ln_z_grid_err=ln_z_grid_err,
        chains=chains,
        times=times,
        flow_samples=_flow_samples(ev, flow_samples, seed) if flow_samples else None,
        warnings=list(chains.warnings) + list(getattr(ev, "warnings", [])),
        diagnostics=dict(getattr(ev, "diagnostics", {}) or {}),
        reliable=bool(ev.reliable),
        unreliable_because=list(ev.unreliable_because),
    )


def model_order(model_names: Sequence[str], reference: str) -> list[str]:
    """The models a comparison runs, in order: the reference first if not listed, no repeats.

    Names are canonical (``build_model(n).name``), so "smbhb + pt_sound" and "smbhb+pt_sound"
    are one model; unknown names raise ValueError before anything is computed.
    """
    names = [build_model(n.strip()).name for n in model_names if n.strip()]
    if not names:
        raise ValueError("no models given; pass e.g. --models powerlaw,smbhb")
    ref = build_model(reference).name
    return list(dict.fromkeys(([] if ref in names else [ref]) + names))


def compare_models(
    data: FreeSpectrum,
    model_names: Sequence[str],
    *,
    reference: str = "smbhb",
    steps: int | None = None,
    ensembles: int = 2,
    seed: int = 0,
    grid_max_dim: int = 3,
    evidence_options: dict[str, Any] | None = None,
    flow_samples: int = 4000,
    progress: bool = True,
    finished: Mapping[str, ModelResult] | None = None,
    on_result: Callable[[ModelResult], None] | None = None,
) -> Comparison:
    """Run :func:`run_model` for every model (the reference is added first if missing).

    Arguments:
        data: the free spectrum (already cut to N frequencies).
        model_names: registry names (see :func:`flows.pta.models.available_models`).
        reference: the model ln B is measured against.
        steps: emcee production steps per ensemble (default
            :func:`flows.pta.sampling.default_steps`).
        ensembles: independent emcee ensembles per model.
        seed: seeds sampling and the flows.
        grid_max_dim: models with at most this many parameters also get the grid ln Z.
        evidence_options: extra keyword arguments for ``flows.posterior.evidence``.
        flow_samples: flow draws kept for corner plots (0: none).
        progress: a tqdm bar over the models.
        finished: results to reuse instead of computing (model name -> result).
        on_result: called with each newly computed result as soon as it is done.
    """
    order = model_order(model_names, reference)
    finished = dict(finished or {})
    start = time.perf_counter()
    results = []
    bar = tqdm(order, desc="models", unit="model", disable=not progress)
    for name in bar:
        if name in finished:
            results.append(finished[name])
            continue
        result = run_model(
            build_model(name), data, steps=steps, ensembles=ensembles, seed=seed,
            grid_max_dim=grid_max_dim, evidence_options=evidence_options,
            flow_samples=flow_samples, progress=bar,
        )
        results.append(result)
        if on_result is not None:
            on_result(result)
    bar.close()
    return Comparison(
        reference=build_model(reference).name,
        results=results,
        nfreqs=data.nfreqs,
        total_time=time.perf_counter() - start,
    )


def _pm(value: float | None, err: float | None, width: int) -> str:
    if value is None or not math.isfinite(value):
        return "-".rjust(width)
    text = f"{value:8.3f} ± {err:5.3f}" if err is not None else f"{value:8.3f}"
    return text.rjust(width)


def format_table(comparison: Comparison) -> str:
    """A plain-text table: ln Z (learned harmonic, importance, grid), ln B, time per model.

    A model with warnings gets a marker [k] in the last column, and the warnings are listed
    under the table; an estimate its own diagnostics call meaningless is printed as
    "unreliable" instead of a number (the number stays in the JSON).
    """
    head = (
        f"{'model':<26} {'D':>2} {'ln Z (flow LHM)':>18} {'ln Z (flow IS)':>18} "
        f"{'ln Z (grid)':>18} {'ln B vs ' + comparison.reference:>20} {'time s':>7}  notes"
    )
    lines = [head, "-" * len(head)]
    notes: list[str] = []
    for r in comparison.results:
        ln_b, ln_b_err = comparison.ln_b(r.name)
        ln_z_cell = _pm(r.ln_z, r.ln_z_err, 18) if r.reliable else "unreliable".rjust(18)
        ln_b_cell = (
            _pm(ln_b, ln_b_err, 20) if comparison.ln_b_reliable(r.name)
            else "unreliable".rjust(20)
        )
        markers = []
        for warning in r.warnings:
            notes.append(f"[{len(notes) + 1}] {r.name}: {warning}")
            markers.append(f"[{len(notes)}]")
        lines.append(
            f"{r.name:<26} {len(r.param_names):>2} {ln_z_cell} "
            f"{_pm(r.ln_z_is, r.ln_z_is_err, 18)} {_pm(r.ln_z_grid, r.ln_z_grid_err, 18)} "
            f"{ln_b_cell} {r.times['total']:7.1f}  {' '.join(markers)}".rstrip()
        )
    lines.append(f"{comparison.nfreqs} frequencies; total time {comparison.total_time:.1f} s")
    if notes:
        lines += ["", "warnings:"] + notes
    return "\n".join(lines)
