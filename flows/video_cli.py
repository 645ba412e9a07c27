"""Sample videos from a trained ``video_tarflow`` checkpoint (text-, image- and video-to-video).

STARFlow-V (Apple 2025) sampling: deep block frame by frame (sequential or video-aware
Jacobi), local blocks per frame, then a denoiser. ``sample.py`` dispatches here for checkpoints
whose ``model.name`` is ``video_tarflow``; it also runs on its own::

    python -m flows.video_cli --checkpoint runs/moving_digits_video --prompt "a 1 and a 4" \\
        --frames 24 --method jacobi --out video.mp4
    python -m flows.video_cli --checkpoint DIR --first-frame img.png --out video.gif
    python -m flows.video_cli --checkpoint DIR --video in.mp4 --frames 32 --out more.mp4

For ``sample.py``: the ``video_tarflow`` kind (flows/kinds.py) names
``flows.video_cli:sample_video_flow``, called as ``sample_video_flow(checkpoint, config,
options)`` with the option names of :data:`DEFAULTS`.

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

from core.checkpoint import load_model, read_config, resolve_source

__all__ = ["DEFAULTS", "build_parser", "load_frames", "main", "sample_video_flow"]

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


def _check(options: dict[str, Any]) -> None:
    if options["method"] not in ("auto", "jacobi", "sequential"):
        raise ValueError(
            f"--method {options['method']!r} is unknown; choose auto, jacobi or sequential"
        )
    if options["denoise"] not in ("none", "tweedie", "learned"):
        raise ValueError(
            f"--denoise {options['denoise']!r} is unknown; choose none, tweedie or learned"
        )
    if options["num"] < 1:
        raise ValueError(f"--num must be >= 1, got {options['num']}")
    if options["frames"] is not None and options["frames"] < 1:
        raise ValueError(f"--frames must be >= 1, got {options['frames']}")
    if options["first_frame"] and options["video"]:
        raise ValueError("give either --first-frame or --video, not both")
    out = options["out"]
    if Path(out).suffix.lower() not in (".mp4", ".gif", ".png"):
        raise ValueError(f"--out {out!r} must end in .mp4, .gif or .png")
    if options["scale"] < 1 or options["fps"] < 1:
        raise ValueError(
            f"--scale and --fps must be >= 1, got {options['scale']} and {options['fps']}"
        )
    if str(options["device"]).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {options['device']!r} asked for, but CUDA is not available")


DEFAULTS: dict[str, Any] = {
    "prompt": None,
    "class_label": None,
    "frames": None,
    "num": 1,
    "method": "auto",
    "guidance": 0.0,
    "guidance_rule": "tarflow",
    "first_frame": None,
    "video": None,
    "context_frames": None,
    "denoise": "learned",
    "jacobi_threshold": 1e-3,
    "jacobi_max_iter": 32,
    "jacobi_chunk": None,
    "seed": 0,
    "out": "video.mp4",
    "fps": 8,
    "scale": 4,
    "device": "cpu",
    "use_ema": True,
    "progress": True,
}


def sample_video_flow(checkpoint: Path, config: dict[str, Any], options: dict[str, Any]) -> dict:
    """sample.py entry point for ``video_tarflow`` checkpoints: write the video, return a summary.

    ``config`` is the checkpoint's config.yaml as a dict; ``options`` may hold any key of
    :data:`DEFAULTS` (missing keys take the defaults).
    """
    options = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    _check(options)
    name = config.get("model", {}).get("name")
    if name != MODEL_NAME:
        raise ValueError(
            f"checkpoint {str(checkpoint)!r} holds a {name!r} model, not {MODEL_NAME!r}"
        )
    model = load_model(checkpoint, options["use_ema"], kind=MODEL_NAME)[0].to(options["device"])
    cfg = model.config
    num = options["num"]
    y = text = given = None
    if options["class_label"] is not None:
        y = torch.full((num,), options["class_label"], dtype=torch.long, device=model.device)
    if options["prompt"] is not None:
        text = model.encode_prompts([options["prompt"]] * num)
    model.check_condition(y, text)
    source = options["first_frame"] or options["video"]
    if source:
        frames = load_frames(
            source, cfg.in_channels, cfg.image_size, first_only=bool(options["first_frame"])
        )
        given = frames[None].expand(num, -1, -1, -1, -1).to(model.device)
    n_given = 0 if given is None else given.shape[1]
    total = options["frames"] if options["frames"] is not None else max(cfg.frames, n_given + 1)
    if total <= n_given:
        raise ValueError(
            f"--frames {total} must exceed the {n_given} given frames (it counts them too)"
        )
    generator = torch.Generator(model.device).manual_seed(options["seed"])
    start = time.perf_counter()
    video, info = model.sample(
        num,
        total - n_given,
        y=y,
        text=text,
        given=given,
        generator=generator,
        denoise=options["denoise"],
        method=options["method"],
        guidance=options["guidance"],
        guidance_rule=options["guidance_rule"],
        jacobi_threshold=options["jacobi_threshold"],
        jacobi_max_iter=options["jacobi_max_iter"],
        jacobi_chunk=options["jacobi_chunk"],
        context_frames=options["context_frames"],
        progress=options["progress"],
    )
    wall = time.perf_counter() - start
    from flows.video_io import write_filmstrip, write_video

    videos, out = (video + 1) / 2, Path(options["out"])
    if out.suffix.lower() == ".png":
        write_filmstrip(out, videos, scale=options["scale"])
    else:  # several videos side by side in one clip
        write_video(
            out, torch.cat(list(videos), dim=-1), fps=options["fps"], scale=options["scale"]
        )
    return {
        "model": MODEL_NAME,
        "checkpoint": str(checkpoint),
        "method": info["method"],
        "jacobi_chunk": info["jacobi_chunk"],
        "frames": total,
        "given_frames": n_given,
        "iterations_per_frame": info["iterations_per_frame"],
        "local_iterations": info["local_iterations"],
        "denoise": info["denoise"],
        "reverse_seconds": round(info["reverse_seconds"], 4),
        "wall_time_s": round(wall, 4),
        "num": num,
        "sample_shape": list(video.shape[1:]),
        "out": str(out),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = {key: getattr(args, key) for key in DEFAULTS if hasattr(args, key)}
    options["class_label"] = args.label
    options["use_ema"] = not args.no_ema
    options["progress"] = not args.no_progress
    try:
        checkpoint = resolve_source(args.checkpoint)
        summary = sample_video_flow(checkpoint, read_config(checkpoint), options)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
