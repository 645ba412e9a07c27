"""Sample videos from a trained ``video_tarflow`` checkpoint (text-, image- and video-to-video).

STARFlow-V (Apple 2025) sampling: deep block frame by frame (sequential or video-aware
Jacobi), local blocks per frame, then a denoiser. ``sample.py`` dispatches here for checkpoints
whose ``model.name`` is ``video_tarflow``; it also runs on its own::

    python -m flows.video_cli --checkpoint runs/moving_digits_video --prompt "a 1 and a 4" \\
        --frames 24 --method jacobi --out video.mp4
    python -m flows.video_cli --checkpoint DIR --first-frame img.png --out video.gif
    python -m flows.video_cli --checkpoint DIR --video in.mp4 --frames 32 --out more.mp4

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
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["build_parser", "load_frames", "main", "sample_video"]

MODEL_NAME = "video_tarflow"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.video_cli", description="Sample videos from a video_tarflow model."
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
    parser.add_argument("--jacobi-threshold", type=float, default=1e-3)
    parser.add_argument("--jacobi-max-iter", type=int, default=32)
    parser.add_argument("--jacobi-chunk", type=int, help="tokens per Jacobi chunk (default: frame)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="video.mp4", help=".mp4 | .gif | .png")
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--scale", type=int, default=4, help="integer upscaling of the output")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--no-ema", action="store_true", help="use the raw, not the EMA, weights")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def load_frames(path: str, channels: int, size: int, first_only: bool = False) -> torch.Tensor:
    """An image or video file -> (G, C, size, size) frames in [-1, 1]."""
    from flows.video_io import match_channels, read_video

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"file {path!r} does not exist")
    if first_only:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(file) as image:
                array = torch.tensor(list(image.convert("RGB").getdata()), dtype=torch.float32)
                w, h = image.size
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"cannot read image {path!r}: {error}") from None
        frames = (array.reshape(h, w, 3).permute(2, 0, 1) / 255.0)[None]
    else:
        frames = read_video(file)
    frames = match_channels(frames, channels)
    if frames.shape[-2:] != (size, size):
        frames = F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True)
    return frames.clamp(0, 1) * 2 - 1


def _check(args: argparse.Namespace) -> None:
    if args.method not in ("auto", "jacobi", "sequential"):
        raise ValueError(f"--method {args.method!r} is unknown; choose auto, jacobi or sequential")
    if args.num < 1:
        raise ValueError(f"--num must be >= 1, got {args.num}")
    if args.frames is not None and args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    if args.first_frame and args.video:
        raise ValueError("give either --first-frame or --video, not both")
    suffix = Path(args.out).suffix.lower()
    if suffix not in (".mp4", ".gif", ".png"):
        raise ValueError(f"--out {args.out!r} must end in .mp4, .gif or .png")
    if args.scale < 1 or args.fps < 1:
        raise ValueError(f"--scale and --fps must be >= 1, got {args.scale} and {args.fps}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device!r} asked for, but CUDA is not available")


def sample_video(args: argparse.Namespace) -> tuple[torch.Tensor, dict[str, Any]]:
    """Load the checkpoint and sample; returns (videos (num, F, C, H, W) in [0, 1], summary)."""
    from trainers.checkpoint import (
        load_checkpoint_config,
        load_checkpoint_model,
        resolve_checkpoint,
    )

    _check(args)
    folder = resolve_checkpoint(args.checkpoint)
    name = load_checkpoint_config(folder).model.name
    if name != MODEL_NAME:
        raise ValueError(f"checkpoint {str(folder)!r} holds a {name!r} model, not {MODEL_NAME!r}")
    model, _ = load_checkpoint_model(folder, use_ema=not args.no_ema)
    model = model.to(args.device)
    cfg = model.config
    y = text = given = None
    if args.label is not None:
        y = torch.full((args.num,), args.label, dtype=torch.long, device=model.device)
    if args.prompt is not None:
        text = model.encode_prompts([args.prompt] * args.num)
    model.check_condition(y, text)
    size = cfg.image_size
    if args.first_frame or args.video:
        frames = load_frames(
            args.first_frame or args.video, cfg.in_channels, size, first_only=bool(args.first_frame)
        )
        given = frames[None].expand(args.num, -1, -1, -1, -1)
    n_given = 0 if given is None else given.shape[1]
    total = args.frames if args.frames is not None else max(cfg.frames, n_given + 1)
    if total <= n_given:
        raise ValueError(
            f"--frames {total} must exceed the {n_given} given frames (it counts them too)"
        )
    generator = torch.Generator(model.device).manual_seed(args.seed)
    start = time.perf_counter()
    video, info = model.sample(
        args.num,
        total - n_given,
        y=y,
        text=text,
        given=given,
        generator=generator,
        denoise=args.denoise,
        method=args.method,
        guidance=args.guidance,
        guidance_rule=args.guidance_rule,
        jacobi_threshold=args.jacobi_threshold,
        jacobi_max_iter=args.jacobi_max_iter,
        jacobi_chunk=args.jacobi_chunk,
        context_frames=args.context_frames,
        progress=not args.no_progress,
    )
    wall = time.perf_counter() - start
    summary = {
        "model": MODEL_NAME,
        "checkpoint": str(folder),
        "method": info["method"],
        "frames": total,
        "given_frames": n_given,
        "iterations_per_frame": info["iterations_per_frame"],
        "local_iterations": info["local_iterations"],
        "denoise": info["denoise"],
        "reverse_seconds": round(info["reverse_seconds"], 4),
        "wall_seconds": round(wall, 4),
        "sample_shape": list(video.shape[1:]),
    }
    return (video + 1) / 2, summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from flows.video_io import write_filmstrip, write_video

    try:
        videos, summary = sample_video(args)
        out = Path(args.out)
        if out.suffix.lower() == ".png":
            write_filmstrip(out, videos, scale=args.scale)
        else:
            tiled = torch.cat(list(videos), dim=-1)  # videos side by side
            write_video(out, tiled, fps=args.fps, scale=args.scale)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary["out"] = str(out)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
