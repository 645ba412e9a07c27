"""The conventions every normkit command line follows, as small reusable pieces.

- :func:`run_cli`: an expected error (a ValueError or OSError: bad input, a missing or damaged
  file) prints one ``error: ...`` line on stderr and returns exit status 2; a bug keeps its
  traceback (exit status 1).
- :class:`ArgumentParser`: ``--help`` shows every default; a usage error is the same one
  ``error:`` line (no usage dump) with status 2.
- :func:`print_json` / :func:`json_line`: the result as one JSON object on one line of stdout
  (non-finite numbers become ``null``: JSON has no NaN).
- Argument types that refuse nan, inf and out-of-range values at parse time
  (:func:`positive_int`, :func:`non_negative_int`, :func:`finite_float`,
  :func:`non_negative_float`, :func:`probability`, :func:`random_seed`),
  :func:`add_threads_option`, the device choices :data:`DEVICES` and :func:`given_options`
  (what the user typed, for samplers that fill in their own defaults).

Nothing heavy is imported here, and a CLI module imports torch and the models only inside the
function that runs a command, so ``--help`` stays fast (``tests/test_clis.py`` checks that no
CLI's parser imports torch). A CLI module looks like::

    from core.cli import ArgumentParser, positive_int, print_json, run_cli

    def _run(argv: list[str] | None) -> None:
        parser = ArgumentParser(prog="python -m mypackage", description=__doc__)
        parser.add_argument("--num", type=positive_int, default=8, help="number of samples")
        args = parser.parse_args(argv)
        print_json({"num": args.num})

    def main(argv: list[str] | None = None) -> int:
        return run_cli(_run, argv)

    if __name__ == "__main__":
        sys.exit(main())
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.files import json_ready

__all__ = [
    "DEVICES",
    "MAX_SEED",
    "ArgumentParser",
    "HelpFormatter",
    "UsageError",
    "add_threads_option",
    "check_output",
    "finite_float",
    "given_options",
    "json_line",
    "non_negative_float",
    "non_negative_int",
    "one_line",
    "positive_int",
    "print_json",
    "probability",
    "random_seed",
    "run_cli",
]

EXPECTED_ERRORS = (ValueError, OSError)
DEVICES = ("cpu", "cuda")  # the choices of every --device option
# torch.Generator.manual_seed takes 0..2**64-1 (a negative seed silently wraps around); the
# bound leaves room for the ``seed + offset`` that samplers and fits derive from a seed
MAX_SEED = 2**63 - 1


class UsageError(ValueError):
    """A command line that does not parse (raised by :class:`ArgumentParser`)."""


def one_line(error: BaseException) -> str:
    """The message of ``error`` with every run of whitespace (newlines too) made one space."""
    return " ".join(str(error).split()) or type(error).__name__


def run_cli(body: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run ``body(argv)``; its return value (None = 0) or 2 after an expected error.

    Expected errors (:data:`EXPECTED_ERRORS`) print ``error: <message>`` as one line on stderr;
    anything else propagates with its traceback, for a bug must not look like bad input.
    """
    try:
        code = body(argv)
    except EXPECTED_ERRORS as error:
        print("error: " + one_line(error), file=sys.stderr)
        return 2
    return 0 if code is None else code


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` after every option that has a default, keeps the description as
    written (examples stay laid out)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if not _shows_default(action):
            return action.help  # nothing to show for "not given" and on/off switches
        return super()._get_help_string(action)

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and _shows_default(action):  # argparse skips help-less options
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


def _shows_default(action: argparse.Action) -> bool:
    return action.default not in (None, argparse.SUPPRESS) and not isinstance(action.const, bool)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with :class:`HelpFormatter` whose usage errors raise :class:`UsageError`.

    Under :func:`run_cli` a usage error is then one ``error:`` line and exit status 2, like
    every other bad input.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def print_json(summary: dict[str, Any]) -> None:
    """Print ``summary`` as one JSON object on one line of stdout."""
    print(json_line(summary), flush=True)


def json_line(summary: dict[str, Any]) -> str:
    """``summary`` as one line of JSON: non-finite floats become null, paths and numpy or
    torch scalars plain values (:func:`core.files.json_ready`)."""
    return json.dumps(json_ready(summary), allow_nan=False)


def check_output(option: str, value: str | None, suffix: str | None = None,
                 new_folder: bool = False) -> None:
    """Raise :class:`UsageError` before any computing when the output path ``value`` of
    ``option`` cannot be written: a folder, a missing folder (unless ``new_folder``: the
    writer makes it), an unwritable one or file, or (with ``suffix``) another file type."""
    if value is None:
        return
    path = Path(value)
    if path.is_dir():
        raise UsageError(f"{option} {value!r} is a folder; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    while new_folder and not parent.exists() and parent != parent.parent:
        parent = parent.parent  # the nearest existing folder is where the writer starts
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"{option} {value!r}: {str(parent)!r} is a file, not a folder")
    if not parent.is_dir():
        raise UsageError(f"{option} {value!r}: the folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{option} {value!r} is not writable")
    if suffix and path.suffix.lower() != suffix:
        raise UsageError(f"{option} {value!r} must end in {suffix}")


def given_options(args: argparse.Namespace, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The options the user gave (those not left at None), without ``skip``: a sampler then
    fills in its own defaults for the rest, so every CLI that calls it behaves the same."""
    return {key: value for key, value in vars(args).items()
            if value is not None and key not in skip}


def _number(text: str, kind: type, low: float | None, high: float | None, what: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (counts: samples, frames, steps)."""
    return _number(text, int, 1, None, "an integer >= 1")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _number(text, int, 0, None, "an integer >= 0")


def finite_float(text: str) -> float:
    """argparse type: a finite number (nan and inf are refused)."""
    return _number(text, float, None, None, "a finite number")


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (thresholds, tolerances)."""
    return _number(text, float, 0.0, None, "a finite number >= 0")


def probability(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    return _number(text, float, 0.0, 1.0, "a number in [0, 1]")


def random_seed(text: str) -> int:
    """argparse type: a random seed, an integer in 0..2**63-1 (every ``--seed``)."""
    return _number(text, int, 0, MAX_SEED, f"an integer in 0..2**63-1 (= {MAX_SEED})")


class _SetThreads(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 value: Any, option_string: str | None = None) -> None:
        import torch

        torch.set_num_threads(value)
        setattr(namespace, self.dest, value)


def add_threads_option(parser: argparse.ArgumentParser, default: int | None = None,
                       help: str | None = None) -> None:
    """Add ``--threads N``: torch's intra-op threads, set as soon as the option is parsed.

    Without it torch uses one thread per core, which is fastest on an idle machine; on a
    shared, loaded one (or with several jobs at once) ``--threads 1`` can be far faster
    (measured: benchmarks/RESULTS.md). A CLI whose ``default`` is a number applies it itself
    when the option is not given (the action only runs for a given option).
    """
    parser.add_argument(
        "--threads", type=positive_int, default=default, action=_SetThreads,
        help=help or "torch threads (default: torch's choice, one per core); 1 on a busy machine",
    )
