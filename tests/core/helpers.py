"""Helpers shared by the tests of core and sample.py: a registry sandbox and tiny checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from core import registry

TINY_FLOW = dict(image_size=8, in_channels=1, patch_size=2, width=16, num_heads=2,
                 layers_per_block=[1, 1], num_classes=3)  # fmt: skip


def save_tiny_vae(folder: Path) -> Path:
    """A 2-level AutoencoderKL with few channels (16x16 RGB -> 4 x 8x8 latents, scaling 0.7)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8), latent_channels=4, norm_num_groups=4, sample_size=16,
        scaling_factor=0.7,
    )  # fmt: skip
    vae.save_pretrained(folder)
    return folder


def sandbox_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a test register kinds and datasets; monkeypatch undoes everything after it."""
    registry.kinds()  # load the declarations first, so that the copies hold them
    for table in ("_KINDS", "_DATASETS", "_SHIPPED"):
        monkeypatch.setattr(registry, table, dict(getattr(registry, table)))


def write_tiny_flow(folder: Path, ema: bool = False, seed: int = 0) -> Path:
    """A trainer-style checkpoint folder of a tiny conditional TARFlow (perturbed weights).

    With ``ema`` the ``ema/`` folder holds other weights than ``model/``.
    """
    from flows.image import TransformerFlow

    torch.manual_seed(seed)
    flow = TransformerFlow(**TINY_FLOW)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    flow.save_pretrained(folder / "model")
    if ema:
        with torch.no_grad():
            for p in flow.parameters():
                p.mul_(0.5)
        flow.save_pretrained(folder / "ema")
    config = {"model": {"name": "tarflow", **TINY_FLOW},
              "data": {"name": "digits", "batch_size": 4}}  # fmt: skip
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder
