"""Command line: sample normal maps or normal-aligned images from a trained checkpoint.

References:
    Huang, Huang, Chen, Xu, Guo. HumanNorm: Learning Normal Diffusion Model for High-quality and
        Realistic 3D Human Generation. CVPR 2024, arXiv:2310.01406.

    python -m diffusion.sample --checkpoint runs/normal_adapted --prompt "front view, full body" \\
        --out normals.png
    python -m diffusion.sample --checkpoint runs/normal_aligned --normal-map normals.png \\
        --out color.png

Bad input prints one line starting with "error: " and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from .sampling import sample_aligned, sample_normals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion.sample", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="run dir or checkpoint-<step> dir")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="normal_adapted: e.g. 'front view, full body'")
    what.add_argument("--normal-map", help="normal_aligned: PNG of a normal map (or a grid)")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--num", type=int, default=None,
                        help="default: 8 normal maps; one aligned image per map of the PNG")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--guidance", type=float, default=None, help="default: the model's")
    parser.add_argument("--sampler", default=None, choices=["ddim", "dpm"],
                        help="default: the model's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-ema", action="store_true", help="use the raw (non-EMA) weights")
    args = parser.parse_args(argv)
    num = {} if args.num is None else {"num": args.num}
    common = dict(**num, seed=args.seed, out=args.out, steps=args.steps,
                  guidance=args.guidance, device=args.device, sampler=args.sampler,
                  use_ema=not args.no_ema)
    try:
        if args.prompt is not None:
            summary = sample_normals(args.checkpoint, args.prompt, **common)
        else:
            summary = sample_aligned(args.checkpoint, args.normal_map, **common)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
