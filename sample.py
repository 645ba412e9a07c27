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
import re
import sys
from pathlib import Path
from typing import Any

# model name (config.yaml: model.name) -> "module:function" sampling entry point
SAMPLERS: dict[str, str] = {
    "tarflow": "flows.sampling:sample_image_flow",
}

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "flows" / "pretrained" / "digits_tarflow"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _default_checkpoint() -> Path:
    """The shipped model, found next to this file or inside the installed flows package."""
    if DEFAULT_CHECKPOINT.is_dir():
        return DEFAULT_CHECKPOINT
    import importlib.util

    spec = importlib.util.find_spec("flows")
    if spec is not None and spec.origin is not None:
        return Path(spec.origin).parent / "pretrained" / "digits_tarflow"
    return DEFAULT_CHECKPOINT


def resolve_checkpoint(path: Path) -> Path:
    """``path`` when it holds a config.yaml, else its newest ``checkpoint-<step>`` child."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if (path / "config.yaml").is_file():
        return path
    found = [
        (int(m.group(1)), child)
        for child in (path.iterdir() if path.is_dir() else [])
        if (m := _CHECKPOINT.match(child.name)) and (child / "config.yaml").is_file()
    ]
    if not found:
        raise FileNotFoundError(
            f"{str(path)!r} is neither a checkpoint (no config.yaml) nor a run directory with "
            "checkpoint-<step> folders"
        )
    return max(found)[1]


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
        description="Sample a trained normkit model and write a PNG grid plus a JSON summary."
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="checkpoint or run folder (default: the shipped digits TARFlow)",
    )
    parser.add_argument("--num", type=int, default=64, help="number of samples (default 64)")
    parser.add_argument(
        "--method",
        choices=("auto", "jacobi", "sequential"),
        default="auto",
        help="inversion: auto picks per call (default), jacobi or sequential",
    )
    parser.add_argument(
        "--guidance",
        type=float,
        default=0.0,
        help="classifier-free guidance weight w (0 = the conditional model)",
    )
    parser.add_argument("--guidance-rule", choices=("tarflow", "starflow"), default="tarflow")
    parser.add_argument(
        "--class",
        dest="class_label",
        type=int,
        default=None,
        help="class of every sample (default: cycle through the classes)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="samples.png", help="output PNG (default samples.png)")
    parser.add_argument(
        "--jacobi-threshold",
        type=float,
        default=None,
        help="Jacobi stop: relative change per pass below this (default: the model's, 5e-8)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.num < 1:
            raise ValueError(f"--num must be a positive number of samples, got {args.num}")
        if args.jacobi_threshold is not None and args.jacobi_threshold < 0:
            raise ValueError(f"--jacobi-threshold must be >= 0, got {args.jacobi_threshold}")
        checkpoint = resolve_checkpoint(args.checkpoint or _default_checkpoint())
        config = read_config(checkpoint)
        sample = sampler_for(config["model"]["name"])
        options = {
            "num": args.num,
            "method": args.method,
            "guidance": args.guidance,
            "guidance_rule": args.guidance_rule,
            "class_label": args.class_label,
            "seed": args.seed,
            "out": args.out,
            "jacobi_threshold": args.jacobi_threshold,
            "device": args.device,
            "progress": not args.no_progress,
        }
        summary = sample(checkpoint, config, options)
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        print("error: " + " ".join(str(error).split()), file=sys.stderr)  # one line
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
