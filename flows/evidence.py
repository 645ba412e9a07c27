r"""Command line: Bayesian evidence and Bayes factors from posterior chains.

    python -m flows.evidence a.npz [b.npz ...] [--json] [--temperature T] \
        [--flow spline|transformer] [--plot out.png] [--column NAME] [--seed S]

Each file holds samples and their ln posterior (see ``flows.posterior.io``: .npz with
``samples`` / ``ln_posterior``, ``X.npy`` + ``X_ln_posterior.npy``, or a whitespace text table
with a named ln-posterior column). Prints ln Z +- error per file (learned harmonic mean,
McEwen et al. 2021, arXiv:2111.12720) and ln B = ln Z_a - ln Z_b for every pair; ``--json``
prints ``{"results": [...], "bayes_factors": [...]}`` instead. Bad input: one line on stderr
starting with "error: " and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from flows.posterior.evidence import EvidenceResult, bayes_factor, evidence
from flows.posterior.io import load_chains


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.evidence",
        description="ln Z (learned harmonic mean with a normalising flow) and Bayes factors "
        "from posterior chains.",
    )
    parser.add_argument("files", nargs="+", help=".npz, X.npy (+ X_ln_posterior.npy) or text")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--temperature", default="auto", help="'auto' or a number in (0, 1]")
    parser.add_argument("--flow", default="spline", choices=["spline", "transformer"])
    parser.add_argument("--plot", default=None, help="corner plot PNG (one per file)")
    parser.add_argument("--column", default=None, help="ln-posterior column (name or index)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=200, help="maximum flow epochs")
    return parser


def _temperature(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--temperature {text!r} is neither 'auto' nor a number") from None
    if not 0.0 < value <= 1.0:
        raise ValueError(f"--temperature {value} must lie in (0, 1]")
    return value


def _column(text: str | None) -> str | int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def _plot_path(base: str, index: int, count: int, file: str) -> Path:
    path = Path(base)
    if count == 1:
        return path
    return path.with_name(f"{path.stem}-{index}-{Path(file.split(',')[0]).stem}{path.suffix}")


def run(args: argparse.Namespace) -> dict:
    temperature = _temperature(args.temperature)
    column = _column(args.column)
    chains = [load_chains(f, column) for f in args.files]
    results: list[EvidenceResult] = []
    for file, chain in zip(args.files, chains):
        result = evidence(
            chain.samples,
            chain.ln_posterior,
            temperature=temperature,
            flow=args.flow,
            seed=args.seed,
            progress=not args.json,
            fit_options={"epochs": args.epochs},
        )
        results.append(result)
        if args.plot:
            from flows.posterior.plot import corner_plot

            flow_samples = result.flow.sample(min(20000, chain.samples[..., 0].size)).numpy()
            path = _plot_path(args.plot, len(results), len(args.files), file)
            corner_plot(chain.samples, flow_samples, path, chain.names)
    rows = []
    for file, result in zip(args.files, results):
        rows.append({"file": file, **result.as_dict()})
    factors = []
    for i in range(len(results)):
        for j in range(i + 1, len(results)):
            ln_b, err = bayes_factor(results[i], results[j])
            factors.append({"a": args.files[i], "b": args.files[j], "ln_b": ln_b, "ln_b_err": err})
    return {"results": rows, "bayes_factors": factors}


def format_table(report: dict) -> str:
    lines = []
    width = max(len("file"), *(len(r["file"]) for r in report["results"]))
    lines.append(
        f"{'file':<{width}}  {'ln Z':>12}  {'+-':>8}  {'T':>5}  {'ESS/chain':>9}  "
        f"{'held-out NLL':>12}"
    )
    for r in report["results"]:
        d = r["diagnostics"]
        lines.append(
            f"{r['file']:<{width}}  {r['ln_z']:>12.4f}  {r['ln_z_err']:>8.4f}  "
            f"{r['temperature']:>5.2f}  {min(d['ess_per_chain']):>9.0f}  {d['held_out_nll']:>12.4f}"
        )
    for r in report["results"]:
        for w in r["warnings"]:
            lines.append(f"warning: {r['file']}: {w}")
    if report["bayes_factors"]:
        lines.append("")
        lines.append(f"{'a':<{width}}  {'b':<{width}}  {'ln B':>10}  {'+-':>8}  {'B':>11}")
        for f in report["bayes_factors"]:
            b = math.exp(f["ln_b"]) if abs(f["ln_b"]) < 700 else math.inf * (f["ln_b"] > 0)
            lines.append(
                f"{f['a']:<{width}}  {f['b']:<{width}}  {f['ln_b']:>10.4f}  "
                f"{f['ln_b_err']:>8.4f}  {b:>11.4g}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
    else:
        print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
