"""Sample quality of every shipped model, one table: model, measure, value, goal, met?

References:
    Lopez-Paz, Oquab. Revisiting Classifier Two-Sample Tests. ICLR 2017, arXiv:1610.06545
    (the C2ST rows, through benchmarks/two_sample.py).

Each model family has a module with ``measure(name: str, quick: bool) -> list[dict]`` whose
rows hold ``model``, ``measure``, ``value``, ``goal`` (text) and ``met`` (True / False, or None
for a value that is only reported): benchmarks/quality_flows.py for the flows and
benchmarks/quality_diffusion.py for the normal-map diffusion models. The goals live in those
modules, not in the tests. A family module that is absent, or a model it cannot measure, gives
one row saying so instead of stopping the table.

    python benchmarks/quality.py                       # every shipped model (tens of minutes)
    python benchmarks/quality.py --models digits_tarflow --quick
    python benchmarks/quality.py --models moving_digits_video

Prints a markdown table, then one JSON line with every row.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# shipped model -> the module that measures it
FAMILIES: dict[str, str] = {
    "digits_tarflow": "benchmarks.quality_flows",
    "moving_digits_video": "benchmarks.quality_flows",
    "normal_adapted": "benchmarks.quality_diffusion",
    "normal_aligned": "benchmarks.quality_diffusion",
}


def measure_model(name: str, quick: bool) -> list[dict[str, Any]]:
    """The rows of one model, or one row naming why it could not be measured."""
    module_name = FAMILIES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        return [_missing(name, f"{module_name.replace('.', '/')}.py is absent")]
    return module.measure(name, quick)


def row(model: str, measure: str, value: Any, goal: str | None = None,
        met: bool | None = None) -> dict[str, Any]:
    """One table row, as every family module returns it."""
    return {"model": model, "measure": measure, "value": value, "goal": goal, "met": met}


def _missing(name: str, why: str) -> dict[str, Any]:
    return row(name, f"not measured: {why}", None, "")


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value and abs(value) < 0.01:  # Jacobi differences: 1e-4 must not print as 0.000
            return f"{value:.1e}"
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    lines = ["| model | measure | value | goal | met? |", "|---|---|---|---|---|"]
    for row in rows:
        met = {True: "yes", False: "**no**", None: ""}[row["met"]]
        lines.append(
            f"| {row['model']} | {row['measure']} | {_format(row['value'])} | {row['goal'] or ''} "
            f"| {met} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(FAMILIES),
        metavar="NAME",
        help=f"shipped models to measure (default: all of {', '.join(FAMILIES)})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer samples and dequantisation draws: a smoke run, noisier values",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.models if name not in FAMILIES]
    if unknown:
        print(
            f"error: --models {unknown[0]!r} is not a shipped model; choose from: "
            f"{', '.join(FAMILIES)}",
            file=sys.stderr,
        )
        return 2
    start = time.perf_counter()
    rows = [row for name in args.models for row in measure_model(name, args.quick)]
    print(table(rows))
    print(
        json.dumps(
            {"quick": args.quick, "seconds": round(time.perf_counter() - start, 1), "rows": rows}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
