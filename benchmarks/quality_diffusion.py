"""Sample quality of the shipped normal-map diffusion models against held-out renders.

References:
    Huang, Huang, Chen, Xu, Guo. HumanNorm: Learning Normal Diffusion Model for High-quality and
        Realistic 3D Human Generation. CVPR 2024, arXiv:2310.01406 (normal-adapted and
        normal-aligned diffusion).
    Lopez-Paz, Oquab. Revisiting Classifier Two-Sample Tests. ICLR 2017, arXiv:1610.06545.

``measure(name, quick)`` returns rows ``{"model", "measure", "value", "goal", "met"}`` (goal and
met are None for reference rows) for the driver ``benchmarks/quality.py``; run directly it
prints the table and writes JSON. Every sample uses the model's own defaults (sampler, steps,
guidance from its config). The held-out renders (seed 1000) and the probe's renders (seed 7)
are drawn apart from the training renders (seed 0) and cached under ``runs/cache``.

- ``normal_adapted``: samples conditioned on the held-out renders' own labels, decoded as a
  user gets them; mean | ||n|| - 1 | before renormalisation, back-facing fraction, foreground
  fraction against the renders', view and framing accuracy of a CNN probe trained on renders
  (its accuracy on the held-out renders is the ceiling), and the classifier two-sample test
  (``benchmarks/two_sample.py``) of the decoded maps against the held-out renders, both as the
  8-bit pixels of a PNG.
- ``normal_aligned``: one image per held-out normal map; the correlation of sample luminance
  with the Lambertian shading of the conditioning normals (renders' own colour images and
  unconditioned samples as references) and the two-sample test against the renders' images.
- Both: the wall time of sampling the README's outputs (16 maps, then 16 images) on this
  machine, the network only (no start-up).

    python benchmarks/quality_diffusion.py                 # both shipped models, ~15 min
    python benchmarks/quality_diffusion.py --quick         # smaller sets, ~3 min
    python benchmarks/quality_diffusion.py --models normal_adapted --checkpoint runs/x
    python benchmarks/quality_diffusion.py --images docs/images   # + the README's pictures
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.quality import row, table  # noqa: E402
from benchmarks.two_sample import c2st, png_levels  # noqa: E402

__all__ = ["MODELS", "measure"]

MODELS = ("normal_adapted", "normal_aligned")
HELDOUT_SEED, PROBE_SEED = 1000, 7
CACHE = ROOT / "runs" / "cache"


def _row(model: str, measure: str, value: float, goal: str | None = None,
         met: bool | None = None) -> dict[str, Any]:
    return row(model, measure, float(value), goal, met)


def _renders(resolution: int, num: int, seed: int):
    from diffusion.data import NormalMapDataset

    cache = CACHE / f"quality_renders_{resolution}_{num}_{seed}.safetensors"
    return NormalMapDataset(resolution, num_samples=num, seed=seed, flip=False,
                            cache=str(cache)).data


def load_model(name: str, checkpoint: str | Path | None = None):
    """The shipped model ``name`` (or the checkpoint / run folder given, of that kind)."""
    from core.checkpoint import load_model as load

    return load(name if checkpoint is None else checkpoint, kind=name)[0]


def _batched(fn, items: torch.Tensor, seed: int, batch: int = 64) -> torch.Tensor:
    out = []
    for i, start in enumerate(range(0, len(items), batch)):
        out.append(fn(items[start:start + batch], torch.Generator().manual_seed(seed + i)))
    return torch.cat(out)


def _time_it(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _inside_back_facing(x: torch.Tensor, mask: torch.Tensor) -> float:
    """Back-facing fraction of the foreground pixels (``mask``, as ``clean_normal_maps`` gives
    it) whose 3x3 neighbourhood is foreground too.

    At the silhouette real normals are nearly perpendicular to the view (n_z near 0), so small
    errors there turn them back-facing; this separates that from errors inside the figure.
    """
    inner = -torch.nn.functional.max_pool2d(-mask.float().unsqueeze(1), 3, 1, 1)
    inner = inner.squeeze(1).bool() & mask
    return float((x[:, 2] < 0)[inner].float().mean())


def measure_adapted(model, quick: bool, name: str = "normal_adapted") -> list[dict[str, Any]]:
    from diffusion.metrics import clean_normal_maps, probe_accuracy, train_view_probe
    from diffusion.normal_maps import normal_quality
    from diffusion.pipelines import sample_normal_maps
    from diffusion.render import FRAMINGS

    res = model.config.resolution
    held = _renders(res, 96 if quick else 512, HELDOUT_SEED)
    probe_data = _renders(res, 512 if quick else 2048, PROBE_SEED)
    probe = train_view_probe(probe_data["x"], probe_data["view"], probe_data["framing"],
                             steps=200 if quick else 600, seed=0)
    ceiling = probe_accuracy(probe, held["x"], held["view"], held["framing"])

    labels = held["view"] * len(FRAMINGS) + held["framing"]
    raw = _batched(lambda y, g: sample_normal_maps(model, y, g), labels, seed=0)
    quality = normal_quality(raw)
    maps, mask = clean_normal_maps(raw)
    inside = _inside_back_facing(raw, mask)
    hits = probe_accuracy(probe, maps, held["view"], held["framing"])
    reference = normal_quality(held["x"], held["mask"])
    test = c2st(png_levels(held["x"]), png_levels(maps))
    seconds = _time_it(lambda: sample_normal_maps(
        model, torch.zeros(16, dtype=torch.long), torch.Generator().manual_seed(0)))
    fg_gap = abs(quality["foreground"] - reference["foreground"])
    ratio = hits["view"] / max(ceiling["view"], 1e-12)
    return [
        _row(name, "mean abs(norm(n) - 1) before renormalisation", quality["norm_error"],
             "<= 0.05", quality["norm_error"] <= 0.05),
        _row(name, "back-facing normals (n_z < 0)", quality["back_facing"], "<= 0.02",
             quality["back_facing"] <= 0.02),
        _row(name, "back-facing normals over 1 px inside the silhouette (diagnostic)", inside),
        _row(name, "foreground fraction", quality["foreground"],
             f"{reference['foreground']:.3f} +- 0.05 (renders)", fg_gap <= 0.05),
        _row(name, "view accuracy (probe)", hits["view"]),
        _row(name, "view accuracy / probe's accuracy on renders", ratio, ">= 0.9", ratio >= 0.9),
        _row(name, "probe's view accuracy on renders (reference)", ceiling["view"]),
        _row(name, "framing accuracy (probe)", hits["framing"]),
        _row(name, "probe's framing accuracy on renders (reference)", ceiling["framing"]),
        _row(name, f"C2ST vs held-out renders (n = {test['n']})", test["c2st"], "<= 0.75",
             test["c2st"] <= 0.75),
        _row(name, "seconds for 16 maps (README command)", seconds, "< 60", seconds < 60),
    ]


def measure_aligned(model, quick: bool, name: str = "normal_aligned") -> list[dict[str, Any]]:
    from diffusion.normal_maps import shading_correlation
    from diffusion.pipelines import sample_aligned_images
    from diffusion.render import light_direction

    res = model.config.resolution
    held = _renders(res, 96 if quick else 512, HELDOUT_SEED)
    cond, mask = held["x"], held["mask"]
    unit = torch.where(mask.unsqueeze(1), cond, torch.zeros_like(cond))
    light = light_direction(torch.float32)
    images = _batched(lambda c, g: sample_aligned_images(model, c, g), cond, seed=0)
    uncond = _batched(lambda c, g: sample_aligned_images(model, torch.zeros_like(c), g,
                                                         guidance_scale=1.0), cond, seed=0)
    corr = shading_correlation(images, unit, mask, light)
    test = c2st(png_levels(held["color"]), png_levels(images))
    seconds = _time_it(lambda: sample_aligned_images(model, cond[:16],
                                                     torch.Generator().manual_seed(0)))
    return [
        _row(name, "corr(luminance, Lambertian n.l)", corr, ">= 0.7", corr >= 0.7),
        _row(name, "corr, unconditioned samples (baseline)",
             shading_correlation(uncond, unit, mask, light)),
        _row(name, "corr, rendered colour images (reference)",
             shading_correlation(held["color"], unit, mask, light)),
        _row(name, f"C2ST vs held-out renders (n = {test['n']})", test["c2st"], "<= 0.75",
             test["c2st"] <= 0.75),
        _row(name, "seconds for 16 images (README chain)", seconds, "< 60", seconds < 60),
    ]


def write_images(folder: str | Path, columns: int = 8) -> list[Path]:
    """The README's pictures of the shipped models (PNG, 2x nearest-neighbour upscaled).

    ``normal_adapted.png``: one row per prompt (each view full body, then front upper body and
    front only head), ``columns`` samples each. ``normal_aligned.png``: two maps of each view
    from those rows (top) and the aligned model's images for them (below), the two models
    chained as ``sample.py`` chains them.
    """
    from core.images import save_image_grid
    from diffusion.data import prompt_to_label
    from diffusion.metrics import clean_normal_maps
    from diffusion.pipelines import sample_aligned_images, sample_normal_maps

    prompts = ["front view, full body", "back view, full body", "left side view, full body",
               "right side view, full body", "front view, upper body", "front view, only head"]
    adapted, aligned = load_model("normal_adapted"), load_model("normal_aligned")
    labels = torch.tensor([prompt_to_label(p) for p in prompts]).repeat_interleave(columns)
    maps, _ = clean_normal_maps(sample_normal_maps(adapted, labels,
                                                   torch.Generator().manual_seed(0)))
    chained = maps[torch.arange(4 * columns).view(4, columns)[:, :2].flatten()]
    images = sample_aligned_images(aligned, chained, torch.Generator().manual_seed(0))
    folder = Path(folder)
    return [
        save_image_grid((maps + 1) / 2, folder / "normal_adapted.png", columns=columns,
                        scale=2),
        save_image_grid((torch.cat([chained, images]) + 1) / 2, folder / "normal_aligned.png",
                        columns=len(chained), scale=2),
    ]


def measure(name: str, quick: bool, checkpoint: str | Path | None = None) -> list[dict[str, Any]]:
    """Quality rows of the shipped model ``name`` (or of ``checkpoint``, a model of that kind)."""
    if name not in MODELS:
        raise ValueError(f"model {name!r} is unknown here; choose one of: {', '.join(MODELS)}")
    torch.manual_seed(0)
    model = load_model(name, checkpoint)
    with torch.no_grad():
        if name == "normal_adapted":
            return measure_adapted(model, quick, name)
        return measure_aligned(model, quick, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sample sets")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names")
    parser.add_argument("--checkpoint", default=None,
                        help="measure this trainer checkpoint instead (needs one --models name)")
    parser.add_argument("--out", default="runs/bench/quality_diffusion.json")
    parser.add_argument("--images", default=None, metavar="DIR",
                        help="also write the README's sample pictures of both models into DIR")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    bad = [n for n in names if n not in MODELS]
    if bad or not names:
        print(f"error: --models {args.models!r}: unknown {bad}; choose from {', '.join(MODELS)}",
              file=sys.stderr)
        return 2
    if args.checkpoint is not None and len(names) != 1:
        print(f"error: --checkpoint needs exactly one --models name, got {names}",
              file=sys.stderr)
        return 2
    try:
        rows = [r for n in names for r in measure(n, args.quick, args.checkpoint)]
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows))
    if args.images is not None:
        for path in write_images(args.images):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
