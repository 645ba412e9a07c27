r"""Command line: ``python -m flows.pta compare ...`` and ``python -m flows.pta models``.

    python -m flows.pta compare --data ../shared/data/ng15/ptarcade_30f_fshd_ceffyl \
        --models powerlaw,smbhb,pt_sound+smbhb,domain_walls+smbhb,cosmic_strings+smbhb \
        [--reference smbhb] [--nfreqs 14] [--json] [--out results/]

Prints the ln Z / ln B table (or, with --json, ``{"reference", "models": [...]}``), and writes
``comparison.json``, ``corner_<model>.png`` (posterior vs flow samples) and
``free_spectrum.png`` (median model spectra over the data violins) under --out.
Errors print one line starting with "error: " and exit with status 2.

References:
    A. Afzal et al. (NANOGrav), arXiv:2306.17219; A. Mitridate et al., arXiv:2306.16377.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .compare import compare_models, format_table
from .data import DEFAULT_FREQUENCIES, MAX_FREQUENCIES, load_free_spectrum
from .models import available_models, build_model
from .plots import corner_plot, free_spectrum_plot, median_spectrum


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.pta", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the spectral models")
    cmp = sub.add_parser("compare", help="rank spectral models by Bayes factor")
    cmp.add_argument("--data", required=True, help="ceffyl/PTArcade free-spectrum directory")
    cmp.add_argument("--models", required=True, help="comma-separated model names")
    cmp.add_argument("--reference", default="smbhb", help="ln B reference model (smbhb)")
    cmp.add_argument("--nfreqs", type=int, default=DEFAULT_FREQUENCIES,
                     help=f"frequencies used, 1..{MAX_FREQUENCIES} (default 14)")
    cmp.add_argument("--steps", type=int, default=None,
                     help="emcee production steps per ensemble (default: adaptive, 25 tau)")
    cmp.add_argument("--ensembles", type=int, default=2, help="independent emcee ensembles")
    cmp.add_argument("--flow", default="spline", help="flow kind for flows.posterior")
    cmp.add_argument("--seed", type=int, default=0)
    cmp.add_argument("--json", action="store_true", help="print the table as JSON")
    cmp.add_argument("--out", default="results", help="folder for JSON and plots")
    cmp.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return parser


def _write_outputs(comparison, data, out: Path, plots: bool) -> list[Path]:  # noqa: ANN001
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "comparison.json"]
    written[0].write_text(json.dumps(comparison.as_dict(), indent=2))
    if not plots:
        return written
    medians = {}
    for r in comparison.results:
        model = build_model(r.name)
        flat = r.chains.flat()
        medians[r.name] = median_spectrum(model, flat, data)
        written.append(
            corner_plot(
                flat, r.param_names, out / f"corner_{r.name.replace('+', '_plus_')}.png",
                other=r.flow_samples, title=f"{r.name}: MCMC vs flow",
            )
        )
    written.append(
        free_spectrum_plot(data, medians, out / "free_spectrum.png",
                           title=f"NANOGrav free spectrum ({data.nfreqs} bins) and model medians")
    )
    return written


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "models":
        for name in available_models():
            model = build_model(name)
            print(f"{name:<24} {', '.join(model.param_names)}")
        return 0
    start = time.perf_counter()
    try:
        if args.steps is not None and args.steps < 50:
            raise ValueError(f"--steps must be >= 50; got {args.steps}")
        if args.ensembles < 1:
            raise ValueError(f"--ensembles must be >= 1; got {args.ensembles}")
        names = [n for n in args.models.split(",") if n.strip()]
        for n in names + [args.reference]:
            build_model(n)
        data = load_free_spectrum(args.data, nfreqs=args.nfreqs)
        comparison = compare_models(
            data, names, reference=args.reference, steps=args.steps,
            ensembles=args.ensembles, seed=args.seed,
            evidence_options={"flow": args.flow},
        )
        written = _write_outputs(comparison, data, Path(args.out), not args.no_plots)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        message = exc.args[0] if exc.args else str(exc)
        print(f"error: {message}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    if args.json:
        print(json.dumps(comparison.as_dict(), indent=2))
        print(f"total time {elapsed:.1f} s", file=sys.stderr)
    else:
        print(format_table(comparison))
        print("wrote " + ", ".join(str(p) for p in written))
        print(f"total time {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
