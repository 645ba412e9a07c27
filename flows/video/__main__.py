"""Sample videos from a trained ``video_tarflow`` checkpoint: ``python -m flows.video``.

STARFlow-V (Apple 2025) sampling, text-, image- and video-to-video; the work is done by
:func:`flows.video.sampling.sample_video_flow` (also ``sample.py``'s entry point)::

    python -m flows.video --checkpoint runs/moving_digits_video --prompt "a 1 and a 4" \\
        --frames 24 --method jacobi --out video.mp4
    python -m flows.video --checkpoint DIR --first-frame img.png --out video.gif
    python -m flows.video --checkpoint DIR --video in.mp4 --frames 32 --out more.mp4

``--frames`` is the length of the output video, given frames included (it may exceed the
training length: the window slides). The output suffix picks the format: .mp4 (PyAV, libx264),
.gif (Pillow) or .png (a filmstrip, one row per video); several videos are tiled side by side.
One JSON line on stdout summarises the run (iterations per frame, wall time); bad input prints
one ``error:`` line on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from flows.jacobi import DEFAULT_JACOBI_THRESHOLD
from flows.video.sampling import DEFAULTS, sample_video_flow

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.video", description="Sample videos from a video_tarflow model."
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint-<step> folder or run dir")
    parser.add_argument("--prompt", help="text prompt (models trained with text_tokens > 0)")
    parser.add_argument("--class", dest="label", type=int, help="class label (num_classes > 0)")
    parser.add_argument("--frames", type=int, help="output length (default: training length)")
    parser.add_argument("--num", type=int, default=1, help="number of videos (default 1)")
    parser.add_argument("--method", default="auto", help="auto | jacobi | sequential")
    parser.add_argument("--guidance", type=float, default=0.0, help="guidance weight w")
    parser.add_argument("--guidance-rule", default="tarflow", help="tarflow | starflow")
    parser.add_argument("--first-frame", help="image file: image-to-video")
    parser.add_argument("--video", help="video file (.mp4/.gif): continue it")
    parser.add_argument("--context-frames", type=int, help="frames kept when the window slides")
    parser.add_argument("--denoise", default="learned", help="none | tweedie | learned")
    parser.add_argument("--jacobi-threshold", type=float, default=DEFAULT_JACOBI_THRESHOLD)
    parser.add_argument("--jacobi-max-iter", type=int, help="passes per chunk at most")
    parser.add_argument("--jacobi-chunk", type=int, help="tokens per Jacobi chunk (default: frame)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="video.mp4", help=".mp4 | .gif | .png")
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--scale", type=int, default=4, help="integer upscaling of the output")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--no-ema", action="store_true", help="use the raw, not the EMA, weights")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = {key: getattr(args, key) for key in DEFAULTS if hasattr(args, key)}
    options["class_label"] = args.label
    options["use_ema"] = not args.no_ema
    options["progress"] = not args.no_progress
    try:
        import yaml

        from trainers.checkpoint import resolve_checkpoint

        checkpoint = resolve_checkpoint(args.checkpoint, require_trainer_state=False)
        try:
            config = yaml.safe_load((checkpoint / "config.yaml").read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise ValueError(f"cannot read {str(checkpoint / 'config.yaml')!r}: {error}") from None
        if not isinstance(config, dict):
            raise ValueError(f"{str(checkpoint / 'config.yaml')!r} is not a config mapping")
        summary = sample_video_flow(checkpoint, config, options)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
