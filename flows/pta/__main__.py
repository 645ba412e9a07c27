"""Rank stochastic gravitational-wave background models by Bayes factor on a PTA free spectrum.

    python -m flows.pta compare --models powerlaw,smbhb,pt_sound+smbhb,domain_walls+smbhb
    python -m flows.pta compare --data path/to/ceffyl_dir --models smbhb,sigw_gauss+smbhb
    python -m flows.pta models

compare: for each model, emcee chains on the refit posterior, a normalising flow fitted to
them and ln Z by the learned harmonic mean (checked by flow importance sampling, and by a grid
integral for models with at most 3 parameters); prints the ln Z / ln B table with every
warning under it, and writes comparison.json, one record per model (models/) and the plots to
--out. Each model's record is written as soon as the model is done, and comparison.json says
"complete": false until all are; --resume reuses the finished models of an interrupted run
when their settings match. The NANOGrav 15-year free spectrum ships with the package (--data
ng15-hd, the default, or ng15-cp); any ceffyl/PTArcade folder (EPTA, PPTA, IPTA, ...) works.

Exit status: 0 done; 2 bad input (one "error:" line); 3 a ln Z is unreliable by its own
diagnostics (its JSON entry says "reliable": false; --allow-unreliable exits 0 instead);
1 a bug (with its traceback).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any

from core.cli import (
    ArgumentParser,
    add_threads_option,
    positive_int,
    print_json,
    random_seed,
    run_cli,
)

from .datasets import BUNDLED, DEFAULT_DATA, DEFAULT_FREQUENCIES, MAX_FREQUENCIES

# the flow kinds of flows.posterior (kept here so that --help does not import torch; a test
# checks that the two agree)
FLOW_KINDS = ("spline", "transformer")
FLOW_SAMPLES = 4000  # flow draws kept per model for the corner plots
EXIT_UNRELIABLE = 3


def _int_in(low: int, high: int | None = None):  # noqa: ANN202 - argparse type factory
    """argparse type: an integer in [low, high] (no upper bound when high is None)."""
    allowed = f"{low}..{high}" if high is not None else f">= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {allowed}, got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m flows.pta",
        description=__doc__.split("\n\n")[0],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{compare,models}")
    sub.add_parser(
        "models", help="list the spectral models and their parameters",
        description="List every spectral model the registry builds, with its parameters.",
    )
    cmp = sub.add_parser(
        "compare", help="rank spectral models by Bayes factor",
        description=__doc__.split("\n\n", 1)[1],
    )
    cmp.add_argument("--models", required=True,
                     help="comma-separated model names (see: python -m flows.pta models)")
    cmp.add_argument("--data", default=DEFAULT_DATA,
                     help=f"bundled data set ({', '.join(BUNDLED)}) or a ceffyl/PTArcade "
                     "free-spectrum folder")
    cmp.add_argument("--reference", default="smbhb", help="the model ln B is measured against")
    cmp.add_argument("--nfreqs", type=_int_in(1, MAX_FREQUENCIES),
                     default=DEFAULT_FREQUENCIES, help="lowest frequency bins used")
    cmp.add_argument("--steps", type=_int_in(50), default=None,
                     help="emcee production steps per ensemble (default: adaptive, until 25 "
                     "autocorrelation times)")
    cmp.add_argument("--ensembles", type=positive_int, default=2,
                     help="independent emcee ensembles per model")
    cmp.add_argument("--flow", choices=FLOW_KINDS, default="spline",
                     help="flow kind fitted to the chains")
    cmp.add_argument("--epochs", type=positive_int, default=200,
                     help="maximum flow-training epochs (early stopping ends most fits sooner)")
    cmp.add_argument("--seed", type=random_seed, default=0,
                     help="seeds the chains and the flows")
    cmp.add_argument("--out", default="results",
                     help="folder for comparison.json, models/ and the plots")
    again = cmp.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="reuse the finished models in --out whose settings match")
    again.add_argument("--overwrite", action="store_true",
                       help="delete an earlier comparison in --out first")
    cmp.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    cmp.add_argument("--json", action="store_true",
                     help="print the result as one JSON object on one line")
    cmp.add_argument("--allow-unreliable", action="store_true",
                     help="exit 0 even when a ln Z is unreliable")
    add_threads_option(cmp)
    return parser


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _list_models() -> int:
    from .models import available_models, build_model

    for name in available_models():
        model = build_model(name)
        print(f"{name:<30} {model.ndim:>2}  {', '.join(model.param_names)}")
    return 0


def _summary(run: dict[str, Any], results: list, reference: str, nfreqs: int,
             pending: list[str]) -> dict[str, Any]:
    """comparison.json while models are still running: finished entries, ln B where possible."""
    ref = next((r for r in results if r.name == reference), None)
    models = []
    for r in results:
        entry = r.entry()
        if ref is not None:
            entry["ln_b"] = r.ln_z - ref.ln_z
            entry["ln_b_err"] = (r.ln_z_err**2 + ref.ln_z_err**2) ** 0.5
        models.append(entry)
    return {"complete": False, **run, "reference": reference, "nfreqs": nfreqs,
            "pending": pending, "models": models}


def _write_plots(comparison, data, out: Path) -> list[Path]:  # noqa: ANN001
    from flows.posterior.plot import corner_plot

    from .models import build_model
    from .plots import free_spectrum_plot, median_spectrum

    written, medians = [], {}
    for r in comparison.results:
        flat = r.chains.flat()
        medians[r.name] = median_spectrum(build_model(r.name), flat, data)
        written.append(corner_plot(
            flat, out / f"corner_{r.name.replace('+', '_plus_')}.png", r.param_names,
            other=r.flow_samples, labels=("posterior (MCMC)", "flow"),
            title=f"{r.name}: MCMC vs flow",
        ))
    written.append(free_spectrum_plot(
        data, medians, out / "free_spectrum.png",
        title=f"free spectrum ({data.nfreqs} bins) and model medians",
    ))
    return written


def _settings(args: argparse.Namespace, order: list[str], data) -> tuple[dict, dict]:  # noqa: ANN001
    """What a model's result depends on: the run's settings, and per model its spectrum."""
    from .models import build_model
    from .store import data_fingerprint, model_fingerprint

    common = {
        "data_sha256": data_fingerprint(data.freqs, data.log10_rho_grid, data.ln_density),
        "nfreqs": args.nfreqs, "steps": args.steps, "ensembles": args.ensembles,
        "flow": args.flow, "epochs": args.epochs, "seed": args.seed,
        "flow_samples": FLOW_SAMPLES,
    }
    per_model = {
        name: {**common, "model": name,
               "spectrum_sha256": model_fingerprint(build_model(name), data.freqs, data.tspan)}
        for name in order
    }
    return common, per_model


def _reusable(folder, order: list[str], settings: dict) -> dict:  # noqa: ANN001
    """The finished models of an earlier run in ``folder`` made with the same settings."""
    from .compare import ModelResult

    finished = {}
    for name in order:
        record = folder.load_model(name, settings[name])
        if record is not None:
            finished[name] = ModelResult.from_entry(
                record["entry"], record["chains"], record["flow_samples"]
            )
    return finished


def _compare(args: argparse.Namespace) -> int:
    from .compare import ModelResult, compare_models, format_table, model_order
    from .data import load_free_spectrum
    from .models import build_model
    from .store import ResultsFolder

    # everything that can be wrong is checked before the first model starts
    order = model_order(args.models.split(","), args.reference)
    reference = build_model(args.reference).name
    data = load_free_spectrum(args.data, nfreqs=args.nfreqs)
    folder = ResultsFolder(args.out)
    folder.prepare(resume=args.resume, overwrite=args.overwrite)

    common, settings = _settings(args, order, data)
    finished = _reusable(folder, order, settings) if args.resume else {}
    run = {"started": _now(), "data": str(args.data), "settings": common,
           "reused": list(finished)}
    done = [finished[n] for n in order if n in finished]
    folder.write_summary(_summary(run, done, reference, data.nfreqs,
                                  [n for n in order if n not in finished]))

    def on_result(result: ModelResult) -> None:
        folder.save_model(result, settings[result.name], result.entry())
        done.append(result)
        names = {r.name for r in done}
        folder.write_summary(_summary(run, done, reference, data.nfreqs,
                                      [n for n in order if n not in names]))

    comparison = compare_models(
        data, order, reference=reference, steps=args.steps, ensembles=args.ensembles,
        seed=args.seed, evidence_options={"flow": args.flow,
                                          "fit_options": {"epochs": args.epochs}},
        flow_samples=FLOW_SAMPLES, progress=not args.json, finished=finished,
        on_result=on_result,
    )
    written = [] if args.no_plots else _write_plots(comparison, data, folder.root)
    result = {"complete": True, **run, "finished": _now(), **comparison.as_dict()}
    folder.write_summary(result)
    written.insert(0, folder.summary)
    if args.json:
        print_json(result)
    else:
        print(format_table(comparison))
        if finished:
            print("reused from the earlier run: " + ", ".join(finished))
        print("wrote " + ", ".join(str(p) for p in written))
    if comparison.reliable or args.allow_unreliable:
        return 0
    bad = [r.name for r in comparison.results if not r.reliable]
    print(f"error: unreliable ln Z for {', '.join(bad)} (see the warnings); "
          "--allow-unreliable accepts it", file=sys.stderr)
    return EXIT_UNRELIABLE


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    return _list_models() if args.command == "models" else _compare(args)


def main(argv: list[str] | None = None) -> int:
    """Parse, run, report; the exit status (see the module docstring)."""
    return run_cli(_run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
