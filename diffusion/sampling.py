"""Sampling trained checkpoints into PNG files (for sample.py and ``python -m diffusion.sample``).

References:
    Huang, Huang, Chen, Xu, Guo. HumanNorm: Learning Normal Diffusion Model for High-quality and
        Realistic 3D Human Generation. CVPR 2024, arXiv:2310.01406 (prompt -> normal map ->
        aligned image).

- :func:`sample_normals`: a normal-adapted checkpoint + a prompt -> PNG grid of normal maps
  (decoded, renormalised, re-encoded) and their quality before renormalisation.
- :func:`sample_aligned`: a normal-aligned checkpoint + a normal-map PNG -> PNG of generated
  images and the luminance / Lambertian shading correlation. A grid that :func:`sample_normals`
  wrote (marked in its PNG text chunk ``normkit-tile``) is cut into its maps and answered with
  the matching grid: image i stands where map i stood. Any other PNG is one map, resized.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.checkpoint import load_model
from core.checks import require_device
from core.images import grid_tiles, read_image, save_image_grid

from .normal_maps import (
    decode_normals,
    encode_normals,
    normal_quality,
    resize_normals,
    shading_correlation,
)
from .render import light_direction

__all__ = [
    "TILE_KEY",
    "load_normal_map_png",
    "sample_adapted_checkpoint",
    "sample_aligned",
    "sample_aligned_checkpoint",
    "sample_normals",
    "write_normal_grid",
]

TILE_KEY = "normkit-tile"  # PNG text chunk: the tile side of a grid of normal maps
_COLUMNS = 8


def write_normal_grid(maps: torch.Tensor, path: str | Path, columns: int = _COLUMNS) -> Path:
    """Encoded maps ``(N, 3, R, R)`` in [0, 1] as a gap-free PNG grid marked as a normkit grid.

    The mark (PNG text ``normkit-tile`` = R) tells :func:`load_normal_map_png` to cut the grid
    back into its maps, so that a 64x64 normal map of one figure is never mistaken for four.
    """
    return save_image_grid(maps, path, columns=columns, gap=0, background=0.0,
                           text={TILE_KEY: str(maps.shape[-1])})


def _grid_tile(path: Path) -> int | None:
    """The tile side a normkit grid PNG declares, or None for any other image."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            text = getattr(image, "text", {}).get(TILE_KEY)
    except OSError:
        return None  # read_image reports unreadable files with the reason
    return int(text) if text is not None and text.isdigit() and int(text) > 0 else None


def load_normal_map_png(
    path: str | Path, resolution: int
) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """Normal maps ``(N, 3, R, R)`` in [-1, 1] (background -1), their masks and grid columns.

    A grid written by :func:`write_normal_grid` is cut into its tiles (the empty cells after
    the last map dropped; tiles of another size are resized); any other image is one map,
    resized with its mask and renormalised (columns None: not a grid).
    """
    rgb = read_image(path)
    h, w = rgb.shape[-2:]
    tile = _grid_tile(Path(path))
    if tile is not None and h % tile == 0 and w % tile == 0:
        normals, mask, _ = decode_normals(grid_tiles(rgb, tile))
        # Only the empty cells after the last map are padding; an empty map keeps its place.
        used = int(mask.flatten(1).any(dim=1).nonzero().max()) + 1 if mask.any() else 0
        normals, mask, columns = normals[:used], mask[:used], w // tile
        if tile != resolution and len(normals):
            normals, mask = resize_normals(normals, mask, resolution)
    else:
        normals, mask, _ = decode_normals(rgb)
        normals, mask = resize_normals(normals[None], mask[None], resolution)
        columns = None
    if len(normals) == 0 or not mask.any():
        raise ValueError(f"normal map {str(path)!r} has no foreground (it is all black)")
    x = torch.where(mask.unsqueeze(1), normals, -torch.ones_like(normals))
    return x, mask, columns


def sample_normals(
    checkpoint: str | Path,
    prompt: str = "front view, full body",
    num: int = 8,
    seed: int = 0,
    out: str | Path = "normals.png",
    steps: int | None = None,
    guidance: float | None = None,
    device: str = "cpu",
    sampler: str | None = None,
    use_ema: bool = True,
) -> dict[str, Any]:
    """Sample ``num`` normal maps for ``prompt`` from a ``normal_adapted`` checkpoint.

    ``steps``, ``guidance`` and ``sampler`` default to the model's own (its config). Writes the
    decoded, renormalised maps as a PNG grid at ``out`` and returns a summary:
    ``out``, ``prompt``, ``label``, ``num``, ``norm_error`` (mean | ||n|| - 1 | before
    renormalisation), ``back_facing`` (fraction of foreground normals with n_z < 0),
    ``foreground`` (fraction of pixels).
    """
    from .data import label_to_prompt, prompt_to_label
    from .metrics import clean_normal_maps
    from .pipelines import sample_normal_maps

    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    label = prompt_to_label(prompt)
    require_device(device)
    model = load_model(checkpoint, use_ema, kind="normal_adapted")[0].to(device)
    generator = torch.Generator().manual_seed(seed)
    x = sample_normal_maps(model, torch.full((num,), label), generator, steps, guidance, sampler)
    quality = normal_quality(x)
    path = write_normal_grid(encode_normals(*clean_normal_maps(x)), out)
    return {"out": str(path), "prompt": label_to_prompt(label), "label": label, "num": num,
            **quality}


def sample_aligned(
    checkpoint: str | Path,
    normal_map_png: str | Path,
    num: int | None = None,
    seed: int = 0,
    out: str | Path = "color.png",
    steps: int | None = None,
    guidance: float | None = None,
    device: str = "cpu",
    sampler: str | None = None,
    use_ema: bool = True,
) -> dict[str, Any]:
    """Images following the normal map(s) of a PNG from a ``normal_aligned`` checkpoint.

    ``num`` defaults to one image per map read; a different ``num`` cycles through the maps.
    The PNG at ``out`` lays the images out as the maps were laid out in a normkit grid (image i
    where map i was), so ``color.png`` lines up with ``normals.png``; the images of a single
    map go in rows of 8. The summary holds ``out``,
    ``num``, ``maps`` (maps read) and ``shading_correlation`` (luminance vs the renderer's
    Lambertian n.l).
    """
    from .pipelines import sample_aligned_images

    if num is not None and num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    require_device(device)
    model = load_model(checkpoint, use_ema, kind="normal_aligned")[0].to(device)
    maps, mask, columns = load_normal_map_png(normal_map_png, model.config.resolution)
    num = len(maps) if num is None else num
    index = torch.arange(num) % len(maps)
    cond, cmask = maps[index], mask[index]
    generator = torch.Generator().manual_seed(seed)
    images = sample_aligned_images(model, cond, generator, steps, guidance, sampler).cpu()
    unit = torch.where(cmask.unsqueeze(1), cond, torch.zeros_like(cond))
    corr = shading_correlation(images.float(), unit.float(), cmask, light_direction(torch.float32))
    path = save_image_grid((images + 1.0) / 2.0, out, columns=columns or _COLUMNS, gap=0,
                           background=0.0)
    return {"out": str(path), "num": num, "maps": len(maps), "shading_correlation": corr}


_SAMPLE_PY_KEYS = ("num", "seed", "out", "steps", "guidance", "device", "sampler", "use_ema")


def _sample_py_options(options: dict[str, Any], out: str) -> dict[str, Any]:
    """sample.py's options (only those the user gave) as keyword arguments of the samplers."""
    kwargs = {key: options[key] for key in _SAMPLE_PY_KEYS if key in options}
    kwargs.setdefault("out", out)
    return kwargs


def sample_adapted_checkpoint(
    checkpoint: Path, config: dict[str, Any], options: dict[str, Any]
) -> dict[str, Any]:
    """sample.py entry point for ``normal_adapted``: ``--prompt`` -> a grid of normal maps."""
    summary = sample_normals(
        checkpoint,
        options.get("prompt", "front view, full body"),
        **_sample_py_options(options, "normals.png"),
    )
    return {"model": "normal_adapted", "checkpoint": str(checkpoint), **summary}


def sample_aligned_checkpoint(
    checkpoint: Path, config: dict[str, Any], options: dict[str, Any]
) -> dict[str, Any]:
    """sample.py entry point for ``normal_aligned``: ``--normal-map`` PNG -> aligned images."""
    if "normal_map" not in options:
        raise ValueError(
            "a normal_aligned checkpoint needs --normal-map PNG (e.g. the output of a "
            "normal_adapted checkpoint)"
        )
    summary = sample_aligned(
        checkpoint, options["normal_map"], **_sample_py_options(options, "color.png")
    )
    return {"model": "normal_aligned", "checkpoint": str(checkpoint), **summary}
