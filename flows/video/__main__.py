"""Sample videos from a trained ``video_tarflow`` checkpoint: ``python -m flows.video``.

STARFlow-V (Apple 2025) sampling, text-, image- and video-to-video; the work is done by
:func:`flows.video.sampling.sample_video_flow` (also ``sample.py``'s entry point)::

    python -m flows.video --checkpoint runs/moving_digits_video --prompt "a 1 and a 4" \\
        --frames 24 --method jacobi --out video.mp4
    python -m flows.video --checkpoint DIR --first-frame img.png --out video.gif
    python -m flows.video --checkpoint DIR --video in.mp4 --frames 32 --out more.mp4

``--checkpoint`` takes a checkpoint folder, a run folder or a shipped model name. ``--frames``
is the length of the output video, given frames included (it may exceed the training length:
the window slides). The output suffix picks the format: .mp4 (PyAV, libx264), .gif (Pillow) or
.png (a filmstrip, one row per video); several videos are tiled side by side. One JSON line on
stdout summarises the run (iterations per frame, wall time); bad input prints one ``error:``
line on stderr and exits with code 2.
"""

from __future__ import annotations

import sys

from core.cli import (
    DEVICES,
    ArgumentParser,
    add_threads_option,
    finite_float,
    non_negative_float,
    positive_int,
    print_json,
    random_seed,
    run_cli,
)

__all__ = ["build_parser", "main"]

# flows.sampling.METHODS, flows.video.sampling.DENOISERS and flows.jacobi's default threshold,
# named here so that --help does not import torch (tests/flows/video/test_cli.py checks that
# they agree)
METHODS = ("sequential", "jacobi", "auto")
DENOISERS = ("none", "tweedie", "learned")
DEFAULT_JACOBI_THRESHOLD = 1e-11


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m flows.video", description="Sample videos from a video_tarflow model."
    )
    add = parser.add_argument
    add("--checkpoint", required=True, help="checkpoint folder, run folder or shipped name")
    add("--prompt", help="text prompt (models trained with text_tokens > 0)")
    add("--class", dest="class_label", type=int, help="class label (num_classes > 0)")
    add("--frames", type=positive_int, help="output length (default: training length)")
    add("--num", type=positive_int, default=1, help="number of videos")
    add("--method", choices=METHODS, default="auto", help="how the flow is inverted")
    add("--guidance", type=finite_float, default=0.0, help="guidance weight w")
    add("--guidance-rule", choices=("tarflow", "starflow"), default="tarflow")
    add("--first-frame", help="image file: image-to-video")
    add("--video", help="video file (.mp4/.gif): continue it")
    add("--context-frames", type=positive_int, help="frames kept when the window slides")
    add("--denoise", choices=DENOISERS, default="learned")
    add("--jacobi-threshold", type=non_negative_float, default=DEFAULT_JACOBI_THRESHOLD)
    add("--jacobi-max-iter", type=positive_int, help="passes per chunk at most")
    add("--jacobi-chunk", type=positive_int, help="tokens per Jacobi chunk (default: a frame)")
    add("--seed", type=random_seed, default=0)
    add("--out", default="video.mp4", help=".mp4 | .gif | .png")
    add("--fps", type=positive_int, default=8)
    add("--scale", type=positive_int, default=4, help="integer upscaling of the output")
    add("--device", choices=DEVICES, default="cpu")
    add("--no-ema", dest="use_ema", action="store_false", help="the raw, not the EMA, weights")
    add("--no-progress", dest="progress", action="store_false")
    add_threads_option(parser)
    return parser  # fmt: skip


def _sample(argv: list[str] | None) -> None:
    args = build_parser().parse_args(argv)
    from core.checkpoint import read_config, resolve_source
    from flows.video.sampling import DEFAULTS, sample_video_flow

    options = {key: getattr(args, key) for key in DEFAULTS}
    checkpoint = resolve_source(args.checkpoint)
    print_json(sample_video_flow(checkpoint, read_config(checkpoint), options))


def main(argv: list[str] | None = None) -> int:
    return run_cli(_sample, argv)


if __name__ == "__main__":
    sys.exit(main())
