"""Command line: sample normal maps or normal-aligned images from a trained checkpoint.

References:
    Huang, Huang, Chen, Xu, Guo. HumanNorm: Learning Normal Diffusion Model for High-quality and
        Realistic 3D Human Generation. CVPR 2024, arXiv:2310.01406.

examples:
    python -m diffusion.sample --checkpoint runs/normal_adapted --prompt "front view, full body"
    python -m diffusion.sample --checkpoint runs/normal_aligned --normal-map normals.png \\
        --out color.png

The same sampler as python sample.py, with the same options, defaults and JSON summary (one
line on stdout): the checkpoint's model.name (normal_adapted or normal_aligned) picks it. Bad
input prints one line starting with "error: " and exits with code 2.
"""

from __future__ import annotations

import sys

from core.cli import (
    DEVICES,
    ArgumentParser,
    add_threads_option,
    finite_float,
    given_options,
    positive_int,
    print_json,
    random_seed,
    run_cli,
)

__all__ = ["KINDS", "build_parser", "main"]

KINDS = ("normal_adapted", "normal_aligned")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m diffusion.sample",
                            description=__doc__.split("\n\n", 1)[0],
                            epilog=__doc__.split("\n\n", 2)[2])
    add = parser.add_argument
    add("--checkpoint", required=True,
        help="checkpoint folder, run folder (its newest checkpoint) or shipped model name")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="normal_adapted: view / framing words, e.g. "
                      "'front view, full body'")
    what.add_argument("--normal-map", help="normal_aligned: PNG of a normal map (or a grid)")
    add("--out", help="output PNG (default: normals.png for normal_adapted, color.png for "
        "normal_aligned)")
    add("--num", type=positive_int,
        help="number of samples (default: 8 normal maps, one aligned image per map)")
    add("--seed", type=random_seed, default=0)
    add("--steps", type=positive_int, help="denoising steps (default: the model's)")
    add("--guidance", type=finite_float,
        help="classifier-free guidance weight (default: the model's)")
    add("--sampler", choices=("ddim", "dpm"), help="default: the model's")
    add("--device", choices=DEVICES, default="cpu")
    add("--no-ema", dest="use_ema", action="store_false", help="use the raw (non-EMA) weights")
    add_threads_option(parser)
    return parser  # fmt: skip


def _sample(argv: list[str] | None) -> None:
    args = build_parser().parse_args(argv)
    from core import registry
    from core.checkpoint import read_config, resolve_source

    checkpoint = resolve_source(args.checkpoint)
    config = read_config(checkpoint)
    kind = config["model"]["name"]
    if kind not in KINDS:
        raise ValueError(f"--checkpoint {args.checkpoint!r} holds a {kind!r} model; "
                         f"diffusion.sample takes {' or '.join(KINDS)} (python sample.py "
                         "samples every kind)")
    options = given_options(args, skip=("checkpoint", "threads"))
    print_json(registry.get_sampler(kind)(checkpoint, config, options))


def main(argv: list[str] | None = None) -> int:
    return run_cli(_sample, argv)


if __name__ == "__main__":
    sys.exit(main())
