r"""Benchmark: flow-evidence Bayes factors vs nested sampling (dynesty) on NANOGrav 15-yr data.

For each model on the first 14 free-spectrum frequencies (the bundled ng15-hd data): the
normkit pipeline (emcee ensembles + flow + learned-harmonic / importance-sampling ln Z,
:func:`flows.pta.compare.compare_models`) and dynesty's static nested sampler on the same
likelihood and prior, side by side: wall time per model and in total, ln Z and ln B =
ln Z - ln Z_smbhb with errors, and the distance between the two ln B in combined standard
deviations. A model whose flow ln Z is unreliable by its own diagnostics is marked "!" and
its warnings are printed under the table. dynesty is a benchmark-only extra (``bench``).

    OMP_NUM_THREADS=1 python benchmarks/pta.py \
        [--models smbhb,powerlaw,...] [--nlive 400] [--sample rwalk] [--walks 15] \
        [--json results/pta_benchmark.json]

References:
    J. S. Speagle, "dynesty: a dynamic nested sampling package for estimating Bayesian
    posteriors and evidences", arXiv:1904.02180.
    J. Skilling, "Nested sampling for general Bayesian computation", Bayesian Anal. 1 (2006).
    A. Afzal et al. (NANOGrav), arXiv:2306.16219.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

# run from a checkout without installing: the repository root on the import path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.pta import ModelPosterior, build_model, load_free_spectrum  # noqa: E402
from flows.pta.compare import compare_models  # noqa: E402
from flows.pta.datasets import DEFAULT_DATA  # noqa: E402

DEFAULT_MODELS = (
    "smbhb,powerlaw,domain_walls+smbhb,pt_sound+smbhb,cosmic_strings_n+smbhb,sigw_gauss+smbhb"
)


def run_dynesty(
    post: ModelPosterior, nlive: int, seed: int, dlogz: float, sample: str, walks: int
) -> dict:
    import dynesty

    prior = post.model.prior

    def loglike(theta: np.ndarray) -> float:
        value = float(post.ln_likelihood(theta[None])[0])
        return value if math.isfinite(value) else -1e300

    start = time.perf_counter()
    sampler = dynesty.NestedSampler(
        loglike, prior.from_unit_cube, prior.ndim, nlive=nlive, bound="multi",
        sample=sample, walks=walks, rstate=np.random.default_rng(seed),
    )
    sampler.run_nested(dlogz=dlogz, print_progress=False)
    res = sampler.results
    return {
        "ln_z": float(res.logz[-1]),
        "ln_z_err": float(res.logzerr[-1]),
        "calls": int(np.sum(res.ncall)),
        "time_s": time.perf_counter() - start,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help="bundled data set or ceffyl/PTArcade folder")
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated models")
    parser.add_argument("--reference", default="smbhb", help="the model ln B is taken against")
    parser.add_argument("--nfreqs", type=int, default=14, help="lowest frequency bins used")
    parser.add_argument("--nlive", type=int, default=400, help="dynesty live points")
    parser.add_argument("--sample", default="rwalk",
                        help="dynesty sampler; 'unif' stalled (>20 min) on domain_walls+smbhb")
    parser.add_argument("--walks", type=int, default=15, help="dynesty random-walk steps")
    parser.add_argument("--dlogz", type=float, default=0.1, help="dynesty stopping criterion")
    parser.add_argument("--seed", type=int, default=0, help="seeds both pipelines")
    parser.add_argument("--json", default=None, help="also write the table as JSON here")
    args = parser.parse_args()

    data = load_free_spectrum(args.data, nfreqs=args.nfreqs)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    ours = compare_models(data, names, reference=args.reference, seed=args.seed,
                          flow_samples=0)
    nested = {}
    start = time.perf_counter()
    for r in ours.results:
        post = ModelPosterior(build_model(r.name), data)
        nested[r.name] = run_dynesty(post, args.nlive, args.seed, args.dlogz, args.sample,
                                     args.walks)
        print(f"dynesty {r.name}: ln Z = {nested[r.name]['ln_z']:.3f} ± "
              f"{nested[r.name]['ln_z_err']:.3f} in {nested[r.name]['time_s']:.1f} s",
              file=sys.stderr)
    nested_total = time.perf_counter() - start

    ref = nested[ours.reference]
    rows = []
    head = (f"{'model':<29} {'D':>2} {'flow s':>7} {'ln B flow':>15} {'dynesty s':>9} "
            f"{'ln B dynesty':>15} {'|Δ|/σ':>6} {'ln Z flow':>15} {'ln Z dynesty':>15} "
            f"{'ln Z grid':>9}")
    print(head)
    print("-" * len(head))
    for r in ours.results:
        ln_b, ln_b_err = ours.ln_b(r.name)
        nd = nested[r.name]
        if r.name == ours.reference:
            nb, nb_err = 0.0, 0.0
        else:
            nb, nb_err = nd["ln_z"] - ref["ln_z"], math.hypot(nd["ln_z_err"], ref["ln_z_err"])
        sigma = math.hypot(ln_b_err, nb_err)
        dist = abs(ln_b - nb) / sigma if sigma > 0 else 0.0
        grid = f"{r.ln_z_grid:9.2f}" if r.ln_z_grid is not None else f"{'-':>9}"
        flag = " " if r.reliable else "!"
        print(f"{r.name:<28}{flag}{len(r.param_names):>2} {r.times['total']:7.1f} "
              f"{ln_b:7.2f} ± {ln_b_err:4.2f} {nd['time_s']:9.1f} {nb:7.2f} ± {nb_err:4.2f} "
              f"{dist:6.2f} {r.ln_z:7.2f} ± {r.ln_z_err:4.2f} {nd['ln_z']:7.2f} ± "
              f"{nd['ln_z_err']:4.2f} {grid}")
        rows.append({
            "name": r.name, "ndim": len(r.param_names),
            "flow": {"ln_z": r.ln_z, "ln_z_err": r.ln_z_err, "ln_b": ln_b, "ln_b_err": ln_b_err,
                     "ln_z_importance": r.ln_z_is, "ln_z_importance_err": r.ln_z_is_err,
                     "times_s": r.times, "sampling": r.chains.summary(),
                     "reliable": r.reliable, "warnings": r.warnings},
            "dynesty": {**nd, "ln_b": nb, "ln_b_err": nb_err},
            "ln_z_grid": r.ln_z_grid,
            "ln_b_distance_sigma": dist,
        })
    for r in ours.results:
        for warning in r.warnings:
            print(f"  {r.name}: {warning}")
    print(f"total: flow pipeline {ours.total_time:.1f} s, dynesty {nested_total:.1f} s "
          f"(nlive={args.nlive}, dlogz={args.dlogz}, {args.sample}, walks={args.walks}); "
          "within 2 sigma: "
          f"{sum(r['ln_b_distance_sigma'] <= 2 for r in rows)}/{len(rows)}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(
            {"reference": ours.reference, "nfreqs": data.nfreqs, "models": rows,
             "flow_total_s": ours.total_time, "dynesty_total_s": nested_total}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
