"""The periodic sampling hook: a grid of the model's samples, the training RNG left untouched.

Every ``trainer.sample_every`` steps the trainer calls the model's optional
``sample_for_logging(num, generator)`` (trainers.protocol) on the EMA weights when there are
any, with a generator seeded by ``trainer.seed`` (the same noise every time, so grids of
successive steps compare), inside ``torch.random.fork_rng`` so that sampling never shifts the
training's random streams (exact resume holds whether or not a sample was drawn). The grid
layout follows torchvision's ``make_grid``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["sample_grid", "save_image_grid"]


def save_image_grid(images: torch.Tensor, path: Path) -> None:
    """``(B, C, H, W)`` images or ``(B, T, C, H, W)`` videos (one row each) in [0, 1] -> PNG."""
    from PIL import Image
    from torchvision.utils import make_grid

    images = images.detach().float().cpu().clamp(0, 1)
    if images.ndim == 5:
        nrow = images.shape[1]
        images = images.flatten(0, 1)
    elif images.ndim == 4:
        nrow = max(1, int(math.ceil(math.sqrt(images.shape[0]))))
    else:
        raise ValueError(f"sample_for_logging returned shape {tuple(images.shape)}; "
                         "expected (B, C, H, W) or (B, T, C, H, W)")
    grid = make_grid(images, nrow=nrow, padding=1, pad_value=1.0)
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    if array.shape[2] == 1:
        array = array[:, :, 0]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


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
        save_image_grid(images, path)
