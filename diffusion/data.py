"""Rendered normal-map datasets with HumanNorm view / body-part labels.

References:
    Huang, Huang, Chen, Xu, Guo. HumanNorm: Learning Normal Diffusion Model for High-quality and
        Realistic 3D Human Generation. CVPR 2024, arXiv:2310.01406 (view and body-part prompts,
        camera azimuth U(-180, 180), elevation U(-10, 10)).

Items are dicts of tensors: ``x`` the normal map in [-1, 1] (``2 rgb - 1``, so the background is
-1), ``color`` the aligned shaded image in [-1, 1], ``mask``, ``y`` the combined label
``view * len(FRAMINGS) + framing``, ``view``, ``framing``. Prompts map to labels with
:func:`prompt_to_label` and back with :func:`label_to_prompt`.

The renders can be cached in a safetensors file (the project keeps tensors in safetensors,
never pickles); its metadata holds the render settings, so a cache of other renders is refused
rather than used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from core.files import write_atomically

from .normal_maps import encode_normals, flip_normals
from .render import (
    FRAMINGS,
    VIEWS,
    NormalMapRenderer,
    build_prompt,
    random_mannequin,
    random_primitives,
    sample_camera,
    view_bucket,
)

__all__ = ["NUM_LABELS", "NormalMapDataset", "label_to_prompt", "prompt_to_label"]

NUM_LABELS = len(VIEWS) * len(FRAMINGS)
CACHE_SUFFIX = ".safetensors"
_SETTINGS = "normkit_render_settings"  # the cache's metadata entry: the render settings, JSON
_TENSORS = ("x", "color", "mask", "view", "framing")

_VIEW_WORDS = (("front",), ("back",), ("left",), ("right",))
_FRAMING_WORDS = (("full",), ("upper",), ("head",))


def label_to_prompt(label: int) -> str:
    """The HumanNorm prompt of a combined label, e.g. 0 -> "front view, full body, ..."."""
    if not 0 <= int(label) < NUM_LABELS:
        raise ValueError(f"label {label} out of range; allowed 0..{NUM_LABELS - 1}")
    return build_prompt(int(label) // len(FRAMINGS), int(label) % len(FRAMINGS))


def prompt_to_label(prompt: str) -> int:
    """Combined label of a short prompt naming one view and one framing (case-insensitive).

    "front view, full body", "left side view, only head", "back, upper body" all parse; the
    framing defaults to full body when none is named.
    """
    words = prompt.lower().replace(",", " ").split()
    views = [i for i, keys in enumerate(_VIEW_WORDS) if any(k in words for k in keys)]
    framings = [i for i, keys in enumerate(_FRAMING_WORDS) if any(k in words for k in keys)]
    if len(views) != 1 or len(framings) > 1:
        raise ValueError(
            f"prompt {prompt!r} must name exactly one view (front, back, left, right) and at most "
            f"one framing (full body, upper body, only head)"
        )
    return views[0] * len(FRAMINGS) + (framings[0] if framings else 0)


class NormalMapDataset(Dataset):
    """Procedural mannequin normal maps rendered once (in memory, optionally cached on disk).

    Arguments:
        resolution: image side in pixels.
        num_samples: number of distinct renders.
        seed: seed of the scenes and cameras.
        framings: which body-part framings to draw from (indices into ``FRAMINGS``).
        primitives_fraction: fraction of renders showing random primitives instead of a
            mannequin (labelled with their camera's view and "full body").
        flip: mirror half of the items at random (n_x negated, left/right views swapped).
        cache: optional ``.safetensors`` file holding the renders (written when missing; a
            file of other renders or of another format is refused with a ValueError).
        max_steps: sphere-tracing steps per ray.
    """

    def __init__(
        self,
        resolution: int = 32,
        num_samples: int = 512,
        seed: int = 0,
        framings: tuple[int, ...] | list[int] = (0, 1, 2),
        primitives_fraction: float = 0.0,
        flip: bool = True,
        cache: str | None = None,
        max_steps: int = 64,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        bad = [f for f in framings if not 0 <= int(f) < len(FRAMINGS)]
        if bad or not framings:
            raise ValueError(
                f"framings {list(framings)} invalid; allowed indices 0..{len(FRAMINGS) - 1}"
            )
        if not 0.0 <= primitives_fraction <= 1.0:
            raise ValueError(f"primitives_fraction must be in [0, 1], got {primitives_fraction}")
        if cache is not None and not str(cache).endswith(CACHE_SUFFIX):
            raise ValueError(f"cache {str(cache)!r} must be a {CACHE_SUFFIX} file (renders are "
                             f"cached as safetensors; an old .pt cache cannot be read)")
        self.resolution, self.flip = resolution, flip
        self._flip_rng = np.random.default_rng(seed + 1)
        settings = {"resolution": int(resolution), "num_samples": int(num_samples),
                    "seed": int(seed), "framings": [int(f) for f in framings],
                    "primitives_fraction": float(primitives_fraction),
                    "max_steps": int(max_steps)}
        if cache is not None and Path(cache).exists():
            self.data = _read_cache(Path(cache), settings)
        else:
            self.data = self._render(settings)
            if cache is not None:
                _write_cache(Path(cache), self.data, settings)

    @staticmethod
    def _render(settings: dict[str, Any]) -> dict[str, torch.Tensor]:
        num, framings = settings["num_samples"], settings["framings"]
        rng = np.random.default_rng(settings["seed"])
        renderer = NormalMapRenderer(settings["resolution"], max_steps=settings["max_steps"],
                                     dtype=torch.float32)
        xs, colors, masks, views, frames = [], [], [], [], []
        for _ in tqdm(range(num), desc="rendering normal maps", leave=False,
                      disable=num < 64):
            if rng.uniform() < settings["primitives_fraction"]:
                scene, framing = random_primitives(rng), 0
            else:
                scene = random_mannequin(rng)
                framing = int(framings[int(rng.integers(len(framings)))])
            camera = sample_camera(rng, *scene.framings[framing])
            out = renderer.render(scene, camera)
            normals = out.normals.permute(2, 0, 1)
            xs.append(2.0 * encode_normals(normals, out.mask) - 1.0)
            colors.append(2.0 * out.color.permute(2, 0, 1) - 1.0)
            masks.append(out.mask)
            views.append(view_bucket(camera.azimuth))
            frames.append(framing)
        return {
            "x": torch.stack(xs), "color": torch.stack(colors), "mask": torch.stack(masks),
            "view": torch.tensor(views), "framing": torch.tensor(frames),
        }

    def __len__(self) -> int:
        return len(self.data["x"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        x, color = self.data["x"][index], self.data["color"][index]
        mask, view = self.data["mask"][index], int(self.data["view"][index])
        framing = int(self.data["framing"][index])
        if self.flip and self._flip_rng.uniform() < 0.5:
            mask = mask.flip(-1)
            x = torch.where(mask, flip_normals(x), -torch.ones_like(x))
            color = color.flip(-1)
            view = {2: 3, 3: 2}.get(view, view)
        return {
            "x": x, "color": color, "mask": mask,
            "y": torch.tensor(view * len(FRAMINGS) + framing),
            "view": torch.tensor(view), "framing": torch.tensor(framing),
        }


def _read_cache(path: Path, settings: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The renders in ``path``; ValueError unless it is a render cache of exactly ``settings``."""
    try:
        with safe_open(path, framework="pt") as file:
            metadata = file.metadata() or {}
            data = {name: file.get_tensor(name) for name in file.keys()}
    except (SafetensorError, OSError) as error:  # truncated, another format, unreadable
        raise ValueError(f"cache {str(path)!r} is not a readable safetensors file ({error}); "
                         f"delete it to render again") from None
    if _SETTINGS not in metadata or set(data) != set(_TENSORS):
        raise ValueError(f"cache {str(path)!r} is not a normal-map render cache (no "
                         f"{_SETTINGS!r} metadata or not the tensors {', '.join(_TENSORS)}); "
                         f"delete it or choose another path")
    stored = json.loads(metadata[_SETTINGS])
    if stored != settings:
        differ = ", ".join(f"{key} {stored.get(key)!r} (asked: {value!r})"
                           for key, value in settings.items() if stored.get(key) != value)
        raise ValueError(f"cache {str(path)!r} holds other renders: {differ}; delete it or "
                         f"choose another path")
    return data


def _write_cache(path: Path, data: dict[str, torch.Tensor], settings: dict[str, Any]) -> None:
    """Write beside ``path``, then rename: an interrupted write leaves no half-written cache."""
    metadata = {_SETTINGS: json.dumps(settings)}
    write_atomically(path, lambda tmp: save_file(data, str(tmp), metadata=metadata))
