"""Sample from a trained normkit model: ``python sample.py [--checkpoint DIR] [options]``.

With no arguments it samples the small class-conditional TARFlow that ships in
``flows/pretrained/digits_tarflow`` (Zhai et al., "Normalizing Flows are Capable Generative
Models", arXiv:2412.06329) and writes ``samples.png``. A checkpoint folder is what the trainer
writes (``config.yaml`` + ``model/`` and/or ``ema/``; a run directory means its newest
checkpoint). The checkpoint's ``model.name`` picks the sampler through ``SAMPLERS``, a table of
``"module:function"`` strings; each function is called as
``function(checkpoint: Path, config: dict, options: dict) -> dict`` and returns the JSON summary.

Examples::

    python sample.py
    python sample.py --checkpoint runs/digits_tarflow --num 16 --class 3 --guidance 1.5
    python sample.py --method sequential --seed 1 --out digits.png

Bad input (missing or damaged checkpoint, unknown model kind, class out of range, a count
below 1) prints one ``error: ...`` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

# model name (config.yaml: model.name) -> "module:function" sampling entry point
SAMPLERS: dict[str, str] = {
    "tarflow": "flows.sampling:sample_image_flow",
    "video_tarflow": "flows.video.sampling:sample_video_flow",
    "normal_adapted": "diffusion.cli:sample_adapted_checkpoint",
    "normal_aligned": "diffusion.cli:sample_aligned_checkpoint",
}

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "flows" / "pretrained" / "digits_tarflow"


def _default_checkpoint() -> Path:
    """The shipped model, found next to this file or inside the installed flows package."""
    if DEFAULT_CHECKPOINT.is_dir():
        return DEFAULT_CHECKPOINT
    import importlib.util

    spec = importlib.util.find_spec("flows")
    if spec is not None and spec.origin is not None:
        return Path(spec.origin).parent / "pretrained" / "digits_tarflow"
    return DEFAULT_CHECKPOINT


def read_config(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's config.yaml as a dict with a ``model.name``."""
    import yaml

    try:
        config = yaml.safe_load((checkpoint / "config.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read {str(checkpoint / 'config.yaml')!r}: {error}") from error
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ValueError(f"{str(checkpoint / 'config.yaml')!r} has no 'model' section")
    if "name" not in config["model"]:
        raise ValueError(f"{str(checkpoint / 'config.yaml')!r} has no model.name")
    return config


def sampler_for(model_name: str) -> Any:
    """The sampling function registered for ``model_name`` in :data:`SAMPLERS`."""
    if model_name not in SAMPLERS:
        known = ", ".join(sorted(SAMPLERS))
        raise ValueError(f"model kind {model_name!r} has no sampler; sample.py knows: {known}")
    module, function = SAMPLERS[model_name].split(":")
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"the sampler {SAMPLERS[model_name]!r} of model kind {model_name!r} is unavailable: "
            f"{error}"
        ) from error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Sample a trained normkit model: images, videos or normal maps, plus a JSON "
        "summary. Options a model kind does not use are ignored by its sampler."
    )
    add = parser.add_argument
    add("--checkpoint", type=Path, default=None,
        help="checkpoint or run folder (default: the shipped digits TARFlow)")
    add("--num", type=int, default=None, help="number of samples (default: 64 images, 1 video)")
    add("--method", choices=("auto", "jacobi", "sequential"), default=None,
        help="flow inversion: auto picks per call (default), jacobi or sequential")
    add("--guidance", type=float, default=None,
        help="classifier-free guidance weight w (flows: 0 = the conditional model)")
    add("--guidance-rule", choices=("tarflow", "starflow"), default=None)
    add("--class", dest="class_label", type=int, default=None,
        help="class of every sample (default: cycle through the classes)")
    add("--seed", type=int, default=None)
    add("--out", default=None, help="output file (default: samples.png; video.mp4 for video "
        "models; normals.png / color.png for normal-map diffusion)")
    add("--jacobi-threshold", type=float, default=None,
        help="Jacobi stop: relative change per pass below this (default: the model's)")
    add("--jacobi-max-iter", type=int, default=None, help="Jacobi passes per chunk at most")
    add("--device", choices=("cpu", "cuda"), default=None)
    add("--no-progress", dest="progress", action="store_false", default=None,
        help="hide the progress bar")
    add("--no-ema", dest="use_ema", action="store_false", default=None,
        help="sample the raw weights, not the EMA")
    video = parser.add_argument_group("video flows (video_tarflow)")
    video.add_argument("--prompt", default=None,
                       help="text prompt (video flows; normal-map diffusion: view/part words)")
    video.add_argument("--frames", type=int, default=None, help="output length in frames")
    video.add_argument("--first-frame", default=None, help="image file: image-to-video")
    video.add_argument("--video", default=None, help="video file (.mp4/.gif) to continue")
    video.add_argument("--context-frames", type=int, default=None,
                       help="frames kept when the window slides past the training length")
    video.add_argument("--denoise", choices=("none", "tweedie", "learned"), default=None)
    video.add_argument("--jacobi-chunk", type=int, default=None, help="tokens per Jacobi chunk")
    video.add_argument("--fps", type=int, default=None)
    video.add_argument("--scale", type=int, default=None, help="integer upscaling of the output")
    normals = parser.add_argument_group("normal-map diffusion (normal_adapted, normal_aligned)")
    normals.add_argument("--normal-map", default=None,
                         help="normal_aligned: PNG of a normal map (or a grid of maps)")
    normals.add_argument("--steps", type=int, default=None, help="denoising steps (default 25)")
    normals.add_argument("--sampler", choices=("ddim", "dpm"), default=None)
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Only what the user gave travels: each sampler fills in its own defaults.
    options = {k: v for k, v in vars(args).items() if v is not None and k != "checkpoint"}
    try:
        if options.get("num", 1) < 1:
            raise ValueError(f"--num must be a positive number of samples, got {options['num']}")
        if options.get("jacobi_threshold", 0.0) < 0:
            raise ValueError(f"--jacobi-threshold must be >= 0, got {options['jacobi_threshold']}")
        from trainers.checkpoint import resolve_checkpoint

        checkpoint = resolve_checkpoint(
            args.checkpoint or _default_checkpoint(), require_trainer_state=False
        )
        config = read_config(checkpoint)
        sample = sampler_for(config["model"]["name"])
        summary = sample(checkpoint, config, options)
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        print("error: " + " ".join(str(error).split()), file=sys.stderr)  # one line
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
