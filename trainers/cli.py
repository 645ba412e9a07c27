"""The trainer's command line, ``python -m trainers.train --config configs/X.yaml [key=value ...]``.

Kept apart from :mod:`trainers.train` (the Accelerate loop of Gugger et al.'s Accelerate,
https://github.com/huggingface/accelerate) so that ``--help`` and a bad config answer without
importing torch. Exit status: 0 done; 2 the user's input is wrong (config, data, run folder,
resume checkpoint), one ``error:`` line; 1 the run stopped (non-finite losses or weights; one
line) or a bug (a traceback).
"""

from __future__ import annotations

import sys

from core.cli import ArgumentParser, add_threads_option, one_line, run_cli

__all__ = ["build_parser", "main"]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m trainers.train",
        description="Train a registered model from a YAML config plus key=value overrides "
        "(every key: docs/training.md).",
    )
    parser.add_argument("--config", required=True, help="YAML file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. optimizer.lr=3e-4")
    add_threads_option(parser, help="torch threads per process: the same as trainer.threads=N "
                       "(default: the config's, else one per core); 1 on a busy machine")
    return parser


def _train(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from trainers.config import load_config
    from trainers.train import TrainingStopped, train

    overrides = list(args.overrides)
    if args.threads is not None:
        overrides.append(f"trainer.threads={args.threads}")
    config = load_config(args.config, overrides)
    try:
        train(config)
    except TrainingStopped as error:
        print("error: " + one_line(error), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; the exit code: 0 done, 2 bad input, 1 a stopped run (or a bug)."""
    return run_cli(_train, argv)


if __name__ == "__main__":
    sys.exit(main())
