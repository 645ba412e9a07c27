r"""Command line: Bayesian evidence and Bayes factors from posterior chains.

    python -m flows.posterior a.npz [b.nc ...] [--format auto|npz|...] [--json] [--out r.json]
        [--temperature auto|T] [--flow spline|transformer] [--plot corner.png] [--threads N]

(``python -m flows.evidence`` is the same command.) Each file holds chains and their ln
posterior in one of the formats of ``flows.posterior.readers`` (detected from the file;
``--format`` overrides). Prints ln Z +- error per file (learned harmonic mean, McEwen et al.
2021, arXiv:2111.12720) with every warning marked beside its row and spelled out below the
table, then ln B = ln Z_a - ln Z_b for every pair; ``--json`` prints one JSON object on one
line instead, ``--out`` also writes it to a file (atomically).

Exit status: 0 success; 2 bad input (one line on stderr starting with "error: "); 3 at least
one estimate is unreliable by its own diagnostics (its JSON entry says ``"reliable": false``;
``--allow-unreliable`` exits 0 instead); 1 a bug (with its traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from core.cli import (
    ArgumentParser,
    UsageError,
    add_threads_option,
    check_output,
    json_line,
    random_seed,
    run_cli,
)
from flows.posterior.readers import FORMATS as READERS

__all__ = ["EXIT_BAD_INPUT", "EXIT_UNRELIABLE", "build_parser", "main"]

EXIT_BAD_INPUT = 2
EXIT_UNRELIABLE = 3
FORMATS = ("auto", *READERS)
FLOWS = ("spline", "transformer")  # flows.posterior.kinds.FLOWS, named here to spare torch


def _number(kind: type, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False):
    """argparse type: a finite int/float within bounds; the message names what is allowed."""
    what = "an integer" if kind is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        bad = not math.isfinite(value)
        bad |= low is not None and (value <= low if low_open else value < low)
        bad |= high is not None and (value >= high if high_open else value > high)
        if bad:
            lo = "-inf" if low is None else f"{low:g}"
            hi = "inf" if high is None else f"{high:g}"
            span = f"{'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"{text} must be {what} in {span}")
        return value
    return parse


def _temperature(text: str) -> float | str:
    if text == "auto":
        return text
    return _number(float, 0.0, 1.0, low_open=True)(text)


def build_parser(prog: str = "python -m flows.posterior") -> ArgumentParser:
    parser = ArgumentParser(
        prog=prog,
        description="ln Z (learned harmonic mean with a normalising flow) and Bayes factors "
        "from posterior chains. Exit status: 0 ok, 2 bad input, 3 an estimate is unreliable "
        "(see --allow-unreliable), 1 a bug.",
    )
    parser.add_argument("files", nargs="+", help="chain files or folders (see --format)")
    parser.add_argument("--format", default="auto", choices=FORMATS,
                        help="chain format; auto detects it from each file")
    parser.add_argument("--column", default=None,
                        help="ln-posterior column or variable (a name, or an integer index)")
    parser.add_argument("--burn-in", type=_number(float, 0.0, 1.0, high_open=True), default=None,
                        help="fraction of each chain to drop (default: 0.25 for emcee and "
                        "ptmcmc, else 0)")
    parser.add_argument("--temperature", type=_temperature, default="auto",
                        help="'auto' or a number in (0, 1]")
    parser.add_argument("--flow", default="spline", choices=FLOWS, help="flow kind")
    parser.add_argument("--epochs", type=_number(int, 0), default=200,
                        help="maximum flow training epochs (0: the Gaussian fit)")
    parser.add_argument("--seed", type=random_seed, default=0,
                        help="seeds the chain split, the flow fit and importance draws")
    add_threads_option(parser, default=1, help="torch CPU threads (1 is fastest for these "
                       "small flows on a busy machine; see docs/posterior.md)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (one line)")
    parser.add_argument("--out", default=None, help="also write the JSON report to this file "
                        "(rewritten after every file: \"complete\": false until all are done)")
    parser.add_argument("--resume", action="store_true", help="reuse the files an interrupted "
                        "run finished in --out (those computed with the same settings)")
    parser.add_argument("--plot", default=None, help="corner plot PNG (one per file)")
    parser.add_argument("--allow-unreliable", action="store_true",
                        help="exit 0 even when an estimate is unreliable")
    return parser


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
    stem = Path(file.split(",")[0].rstrip("/")).stem
    return path.with_name(f"{path.stem}-{index}-{stem}{path.suffix}")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """What a file's result depends on besides the file: a resumed row must match them."""
    return {key: getattr(args, key) for key in
            ("format", "column", "burn_in", "temperature", "flow", "epochs", "seed")}


def _finished_rows(args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    """file -> row of the earlier report in ``--out`` computed with ``settings`` (--resume)."""
    if not args.out:
        raise UsageError("--resume needs --out (the report of the run to continue)")
    path = Path(args.out)
    if not path.exists():
        return {}
    try:
        report = json.loads(path.read_text())
        rows = report["results"] if report.get("settings") == settings else []
        return {row["file"]: row for row in rows}
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise UsageError(f"--resume: {args.out!r} is not a report of this CLI ({error})") \
            from None


def _report(settings: dict[str, Any], rows: list[dict[str, Any]], complete: bool) -> dict:
    factors = []  # Bayes factors only once every file is done
    for i, a in enumerate(rows if complete else []):
        for b in rows[i + 1:]:
            ln_za, ln_zb = (math.nan if r["ln_z"] is None else r["ln_z"] for r in (a, b))
            err_a, err_b = (math.inf if r["ln_z_err"] is None else r["ln_z_err"] for r in (a, b))
            ln_b, err = ln_za - ln_zb, math.hypot(err_a, err_b)
            factors.append({
                "a": a["file"], "b": b["file"],
                "ln_b": ln_b if math.isfinite(ln_b) else None,
                "ln_b_err": err if math.isfinite(err) else None,
                "reliable": a["reliable"] and b["reliable"],
            })
    return {"complete": complete, "settings": settings, "results": rows, "bayes_factors": factors}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Read every file, compute, and return the report (no printing).

    With ``--out`` the report is rewritten (atomically) after every file, marked
    ``"complete": false`` until the last one is done; ``--resume`` reuses its finished rows.
    """
    check_output("--out", args.out)
    check_output("--plot", args.plot, ".png")
    settings = _settings(args)
    finished = _finished_rows(args, settings) if args.resume else {}
    from flows.posterior.readers import load_chains

    column = _column(args.column)
    chains = [load_chains(f, column, args.format, args.burn_in) for f in args.files]

    import torch

    from core.files import write_text_atomically
    from flows.posterior.evidence import evidence

    torch.set_num_threads(args.threads)
    rows = []
    for index, (file, chain) in enumerate(zip(args.files, chains), 1):
        if file in finished:
            rows.append(finished[file])
            continue
        result = evidence(
            chain.samples,
            chain.ln_posterior,
            weights=chain.weights,
            temperature=args.temperature,
            flow=args.flow,
            seed=args.seed,
            progress=not args.json and sys.stderr.isatty(),
            fit_options={"epochs": args.epochs},
        )
        rows.append({"file": file, "format": chain.format, "names": chain.names,
                     **result.as_dict()})
        if args.plot:
            from flows.posterior.plot import corner_plot

            flow_samples = result.flow.sample(min(20000, chain.samples[..., 0].size)).numpy()
            corner_plot(chain.samples, _plot_path(args.plot, index, len(args.files), file),
                        chain.names, other=flow_samples, weights=chain.weights)
        if args.out and index < len(args.files):  # a kill now keeps what is done
            write_text_atomically(args.out, json_line(_report(settings, rows, False)) + "\n")
    return _report(settings, rows, True)


def format_table(report: dict[str, Any]) -> str:
    """The terminal table: one row per file, warning markers beside it, texts below."""
    lines, notes = [], []
    width = max(len("file"), *(len(r["file"]) for r in report["results"]))
    lines.append(f"{'file':<{width}}  {'ln Z':>12}  {'+-':>9}  {'T':>4}  {'ESS/chain':>9}  "
                 f"{'held-out NLL':>12}  notes")
    for r in report["results"]:
        d = r["diagnostics"]
        marks = []
        for text in r["warnings"]:
            notes.append(f"[{len(notes) + 1}] {r['file']}: {text}")
            marks.append(f"[{len(notes)}]")
        status = "" if r["reliable"] else "UNRELIABLE "
        ln_z = f"{r['ln_z']:.4f}" if r["ln_z"] is not None else "nan"
        err = f"{r['ln_z_err']:.4f}" if r["ln_z_err"] is not None else "inf"
        lines.append(
            f"{r['file']:<{width}}  {ln_z:>12}  {err:>9}  {r['temperature']:>4.2f}  "
            f"{min(d['ess_per_chain']):>9.0f}  {d['held_out_nll']:>12.4f}  "
            f"{status}{' '.join(marks)}".rstrip()
        )
    if report["bayes_factors"]:
        lines.append("")
        lines.append(f"{'a':<{width}}  {'b':<{width}}  {'ln B':>10}  {'+-':>9}  {'B':>11}  notes")
        for f in report["bayes_factors"]:
            ln_b = math.nan if f["ln_b"] is None else f["ln_b"]
            err = math.inf if f["ln_b_err"] is None else f["ln_b_err"]
            b = math.exp(ln_b) if abs(ln_b) < 700 else math.inf * (ln_b > 0)
            lines.append(
                f"{f['a']:<{width}}  {f['b']:<{width}}  {ln_b:>10.4f}  "
                f"{err:>9.4f}  {b:>11.4g}  {'' if f['reliable'] else 'UNRELIABLE'}"
                .rstrip()
            )
    if notes:
        lines.append("")
        lines.extend(notes)
    return "\n".join(lines)


def _run(argv: list[str] | None, prog: str) -> int:
    args = build_parser(prog).parse_args(argv)
    report = run(args)
    text = json_line(report)
    if args.out:
        from core.files import write_text_atomically

        write_text_atomically(args.out, text + "\n")
    print(text if args.json else format_table(report))
    if all(r["reliable"] for r in report["results"]) or args.allow_unreliable:
        return 0
    unreliable = [r["file"] for r in report["results"] if not r["reliable"]]
    print(f"error: unreliable estimate for {', '.join(unreliable)} (see the warnings); "
          "--allow-unreliable accepts it", file=sys.stderr)
    return EXIT_UNRELIABLE


def main(argv: list[str] | None = None, prog: str = "python -m flows.posterior") -> int:
    """Parse, compute, print; the exit status (see the module docstring)."""
    return run_cli(lambda args: _run(args, prog), argv)
