"""Sample a trained normkit model: ``python sample.py [--checkpoint DIR_OR_NAME] [options]``.

With no arguments it samples the small class-conditional TARFlow that ships as
``digits_tarflow`` (Zhai et al., "Normalizing Flows are Capable Generative Models",
arXiv:2412.06329) and writes ``samples.png``. ``--checkpoint`` takes a checkpoint folder (what
the trainer writes: ``config.yaml`` + ``model/`` and/or ``ema/``), a run folder (its newest
checkpoint) or the name of a shipped model; ``--list`` shows the shipped models. The
checkpoint's ``model.name`` is its kind, and the kind's sampler in ``core.registry`` does the
work and returns the summary printed as one JSON line.

Examples::

    python sample.py
    python sample.py --list
    python sample.py --class 7 --num 16 --guidance 1.5 --out sevens.png
    python sample.py --checkpoint runs/digits_tarflow --method sequential --seed 1
    python sample.py --checkpoint moving_digits_video --prompt "a 3 and a 7" --out video.mp4

Bad input (a missing or damaged checkpoint, an unknown name, nan or a count below 1) prints one
``error: ...`` line and exits with status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from core import registry
from core.cli import (
    DEVICES,
    ArgumentParser,
    add_threads_option,
    check_output,
    finite_float,
    given_options,
    non_negative_float,
    positive_int,
    print_json,
    random_seed,
    run_cli,
)

DEFAULT_MODEL = "digits_tarflow"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python sample.py",
        description="Sample a trained normkit model (images, videos or normal maps) and print "
        "a JSON summary. Options a model kind does not use are ignored by its sampler; unset "
        "ones take the kind's defaults.",
        epilog="examples:\n" + __doc__.split("Examples::\n\n")[1].split("\n\n")[0],
    )
    add = parser.add_argument
    add("--checkpoint", default=None,
        help=f"checkpoint folder, run folder or shipped model name (default: {DEFAULT_MODEL})")
    add("--list", action="store_true", help="list the shipped models and exit")
    add("--num", type=positive_int, default=None,
        help="number of samples (default: 64 images, 1 video, 8 normal maps, one aligned "
        "image per map of --normal-map)")
    add("--method", choices=("auto", "jacobi", "sequential"), default=None,
        help="flow inversion: auto picks per call (default), jacobi or sequential")
    add("--guidance", type=finite_float, default=None,
        help="classifier-free guidance weight w (flows: 0 = the conditional model)")
    add("--guidance-rule", choices=("tarflow", "starflow"), default=None)
    add("--class", dest="class_label", type=int, default=None,
        help="class of every sample (default: cycle through the classes)")
    add("--seed", type=random_seed, default=None)
    add("--out", default=None, help="output file (default: samples.png; video.mp4 for video "
        "models; normals.png / color.png for normal-map diffusion)")
    add("--jacobi-threshold", type=non_negative_float, default=None,
        help="Jacobi stop: relative change per pass below this (default: the model's)")
    add("--jacobi-max-iter", type=positive_int, default=None,
        help="Jacobi passes per chunk at most")
    add("--device", choices=DEVICES, default=None)
    add("--no-progress", dest="progress", action="store_false", default=None,
        help="hide the progress bar")
    add("--no-ema", dest="use_ema", action="store_false", default=None,
        help="sample the raw weights, not the EMA")
    add_threads_option(parser)
    video = parser.add_argument_group("video flows (video_tarflow)")
    video.add_argument("--prompt", default=None,
                       help="text prompt (video flows; normal-map diffusion: view/part words)")
    video.add_argument("--frames", type=positive_int, default=None,
                       help="output length in frames")
    video.add_argument("--first-frame", default=None, help="image file: image-to-video")
    video.add_argument("--video", default=None, help="video file (.mp4/.gif) to continue")
    video.add_argument("--context-frames", type=positive_int, default=None,
                       help="frames kept when the window slides past the training length")
    video.add_argument("--denoise", choices=("none", "tweedie", "learned"), default=None)
    video.add_argument("--jacobi-chunk", type=positive_int, default=None,
                       help="tokens per Jacobi chunk")
    video.add_argument("--fps", type=positive_int, default=None)
    video.add_argument("--scale", type=positive_int, default=None,
                       help="integer upscaling of the output")
    normals = parser.add_argument_group("normal-map diffusion (normal_adapted, normal_aligned)")
    normals.add_argument("--normal-map", default=None,
                         help="normal_aligned: PNG of a normal map, or a grid of maps that "
                         "normal_adapted wrote (answered with the matching grid)")
    normals.add_argument("--steps", type=positive_int, default=None,
                         help="denoising steps (default 25)")
    normals.add_argument("--sampler", choices=("ddim", "dpm"), default=None)
    return parser  # fmt: skip


def _size(folder: Path) -> str:
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return f"{size / 1e6:.1f} MB"


def _training(config: dict[str, Any], folder: Path) -> str:
    """How a checkpoint was trained, in a few words, from its config and trainer state."""
    trainer, optimizer = config.get("trainer") or {}, config.get("optimizer") or {}
    batch = (config.get("data") or {}).get("batch_size", "?")
    steps = f"{trainer.get('max_steps', '?')} steps"
    try:  # a checkpoint taken before the end of its run says so
        step = json.loads((folder / "trainer_state.json").read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        step = None
    if step is not None and step != trainer.get("max_steps"):
        steps = f"step {step} of {steps}"
    words = [steps, f"{optimizer.get('name', '?')}",
             f"lr {optimizer.get('lr', '?')}", f"batch {batch}"]
    if trainer.get("ema_decay") and (folder / "ema").is_dir():
        words.append(f"EMA {trainer['ema_decay']}")
    return ", ".join(words)


def shipped_rows() -> list[list[str]]:
    """One row per shipped model present in this installation (name, kind, ..., description)."""
    from core.checkpoint import installed_shipped_models, read_config

    rows, declared = [], registry.shipped_models()
    for name, folder in installed_shipped_models().items():
        kind, shipped = declared[name]
        config = read_config(folder)
        data = (config.get("data") or {}).get("name", "?")
        rows.append([name, kind.name, data, _size(folder), _training(config, folder),
                     shipped.description])
    return rows


def print_shipped() -> None:
    rows = [["name", "kind", "data", "size", "trained", "what it is"], *shipped_rows()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])


def _sample(argv: list[str] | None) -> None:
    args = build_parser().parse_args(argv)
    if args.list:
        print_shipped()
        return
    check_output("--out", args.out, new_folder=True)  # found before minutes of sampling
    from core.checkpoint import read_config, resolve_source

    checkpoint = resolve_source(args.checkpoint or DEFAULT_MODEL)
    config = read_config(checkpoint)
    sampler = registry.get_sampler(config["model"]["name"])
    # Only what the user gave travels, over the checkpoint's own sampling defaults (if any);
    # each sampler fills in the rest.
    given = given_options(args, skip=NOT_OPTIONS)
    print_json(sampler(checkpoint, config, {**sampling_defaults(config), **given}))


NOT_OPTIONS = ("checkpoint", "list", "threads", "help")


def sampling_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """The ``sample`` section of a checkpoint's config.yaml: options it was tuned to sample with.

    A shipped model records there what its quality was measured with (e.g. its guidance
    weight), so ``python sample.py --checkpoint NAME`` gives what benchmarks/quality.py reports.
    """
    defaults = config.get("sample") or {}
    known = {action.dest for action in build_parser()._actions} - set(NOT_OPTIONS)
    if not isinstance(defaults, dict) or set(defaults) - known:
        wrong = sorted(set(defaults) - known) if isinstance(defaults, dict) else defaults
        raise ValueError(
            f"config.yaml section 'sample' must map sample.py options to values; got {wrong!r}, "
            f"options are: {', '.join(sorted(known))}"
        )
    return defaults


def main(argv: list[str] | None = None) -> int:
    return run_cli(_sample, argv)


if __name__ == "__main__":
    sys.exit(main())
