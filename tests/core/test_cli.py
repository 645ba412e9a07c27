"""core.cli: one-line errors with exit 2, tracebacks for bugs, strict number types, JSON lines."""

from __future__ import annotations

import argparse
import json
import math
import re

import pytest
import torch

from core.cli import (
    MAX_SEED,
    ArgumentParser,
    UsageError,
    add_threads_option,
    check_output,
    finite_float,
    non_negative_float,
    non_negative_int,
    positive_int,
    print_json,
    probability,
    random_seed,
    run_cli,
)


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="tool", description="A tool.")
    parser.add_argument("--num", type=positive_int, default=8, help="how many")
    parser.add_argument("--fps", type=positive_int, default=12)
    parser.add_argument("--weight", type=finite_float, default=None, help="a weight")
    parser.add_argument("--flag", action="store_true", help="a switch")
    add_threads_option(parser)
    return parser


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num", "0"], "argument --num: must be an integer >= 1, got '0'"),
        (["--num", "2.5"], "argument --num: must be an integer >= 1, got '2.5'"),
        (["--weight", "nan"], "argument --weight: must be a finite number, got 'nan'"),
        (["--weight=-inf"], "must be a finite number, got '-inf'"),
        (["--threads", "0"], "argument --threads: must be an integer >= 1"),
        (["--nmu", "3"], "unrecognized arguments: --nmu 3"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(argv, message, capsys) -> None:
    code = run_cli(lambda args: _parser().parse_args(args), argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert "(see tool --help)" in err


def test_expected_errors_exit_2_and_bugs_keep_their_traceback(capsys) -> None:
    def bad_input(argv):
        raise ValueError("value 'x' is wrong;\n  choose one of: a, b")

    def missing(argv):
        raise FileNotFoundError("file 'y' does not exist")

    def bug(argv):
        raise KeyError("oops")

    assert run_cli(bad_input) == 2
    assert capsys.readouterr().err == "error: value 'x' is wrong; choose one of: a, b\n"
    assert run_cli(missing) == 2 and "does not exist" in capsys.readouterr().err
    with pytest.raises(KeyError):
        run_cli(bug)
    assert run_cli(lambda argv: None) == 0 and run_cli(lambda argv: 3) == 3


def test_help_shows_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "how many (default: 8)" in text
    assert re.search(r"--fps FPS\s+\(default: 12\)\n", text)  # an option without help text
    assert "a weight\n" in text and "a switch\n" in text  # nothing shown for None / switches


def test_threads_option_sets_torch_threads() -> None:
    before = torch.get_num_threads()
    try:
        assert _parser().parse_args(["--threads", "2"]).threads == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_number_types() -> None:
    assert positive_int("3") == 3 and non_negative_int("0") == 0
    assert finite_float("-2.5") == -2.5 and non_negative_float("0") == 0.0
    assert probability("1") == 1.0
    for check, text in [(non_negative_int, "-1"), (non_negative_float, "-1e-9"),
                        (probability, "1.01"), (probability, "nan"), (finite_float, "inf")]:
        with pytest.raises(Exception, match=f"got '{text}'"):
            check(text)


def test_random_seed_takes_what_a_torch_generator_takes() -> None:
    assert random_seed("0") == 0 and random_seed(str(MAX_SEED)) == MAX_SEED
    torch.Generator().manual_seed(MAX_SEED + 1)  # headroom: seed + offset stays a valid seed
    allowed = f"an integer in 0..2**63-1 (= {MAX_SEED})"
    for text in ["-1", str(MAX_SEED + 1), str(2**70), "2**70", "1.5"]:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(f"{allowed}, got {text!r}")):
            random_seed(text)


def test_json_is_one_line_without_nan(capsys) -> None:
    from pathlib import Path

    print_json({"a": math.nan, "b": [1.5, math.inf], "c": Path("x/y"), "d": torch.tensor(2.0),
                "e": {"f": "text\nmore"}})
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert json.loads(out) == {"a": None, "b": [1.5, None], "c": "x/y", "d": 2.0,
                               "e": {"f": "text\nmore"}}


def test_check_output_refuses_what_cannot_be_written(tmp_path) -> None:
    check_output("--out", None)  # not given: nothing to check
    check_output("--out", str(tmp_path / "report.json"))
    cases = [
        ((str(tmp_path),), "is a folder; give a file name"),
        ((str(tmp_path / "missing" / "r.json"),), "the folder .* does not exist"),
        ((str(tmp_path / "plot.pdf"), ".png"), r"must end in \.png"),
    ]
    for args, message in cases:
        with pytest.raises(UsageError, match=message):
            check_output("--out", *args)


def test_check_output_new_folder_allows_folders_the_writer_makes(tmp_path) -> None:
    check_output("--out", str(tmp_path / "new" / "deeper" / "video.mp4"), new_folder=True)
    with pytest.raises(UsageError, match="is a folder"):
        check_output("--out", str(tmp_path), new_folder=True)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for new_folder in (False, True):
        with pytest.raises(UsageError, match="is a file, not a folder"):
            check_output("--out", str(blocker / "video.mp4"), new_folder=new_folder)
