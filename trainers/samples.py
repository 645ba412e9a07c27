"""The periodic sampling hook: a grid of the model's samples, the training RNG left untouched.

Every ``trainer.sample_every`` steps the trainer calls the model's optional
``sample_for_logging(num, generator)`` (trainers.protocol) on the EMA weights when there are
any, with a generator seeded by ``trainer.seed`` (the same noise every time, so grids of
successive steps compare), inside ``torch.random.fork_rng`` so that sampling never shifts the
training's random streams (exact resume holds whether or not a sample was drawn). The grid is
written by ``core.images.save_image_grid``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.images import save_image_grid

__all__ = ["sample_grid"]

# Tiles smaller than this (in pixels, their shorter side) are upscaled to it, so that the
# smoke MLP's 1x8 rows give a picture one can see, not a 28x7-pixel PNG.
MIN_TILE_SIDE = 16


def sample_grid(accelerator: Any, model: nn.Module, num: int, seed: int, path: Path) -> None:
    """``model.sample_for_logging(num, generator)`` -> PNG at ``path`` (main process writes)."""
    from accelerate.utils import DistributedType

    sharded = accelerator.distributed_type == DistributedType.FSDP
    if not (accelerator.is_main_process or sharded):
        return
    device = accelerator.device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        generator = torch.Generator(device=device).manual_seed(seed)
        was_training = model.training
        model.eval()
        images = model.sample_for_logging(num, generator)
        model.train(was_training)
    if accelerator.is_main_process:
        side = min(images.shape[-2:])
        save_image_grid(images, path, scale=max(1, -(-MIN_TILE_SIDE // side)))
