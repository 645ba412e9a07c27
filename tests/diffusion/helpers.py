"""Helpers shared by the diffusion tests: a seeded fixed-batch loss, a few optimizer steps, and a
two-step run of a committed config through the real trainer."""

from __future__ import annotations

from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def fixed_loss(model, batch) -> float:
    model.eval()
    torch.manual_seed(123)
    with torch.no_grad():
        value = float(model.loss(batch)["loss"])
    model.train()
    return value


def train_steps(model, batch, optimizer, steps: int = 15) -> None:
    """``steps`` optimizer steps on ``batch`` (seeded per step)."""
    for step in range(steps):
        torch.manual_seed(step)
        loss = model.loss(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def train_config(config: str, out: Path, *extra: str) -> Path:
    from accelerate.state import AcceleratorState

    from trainers import load_config
    from trainers.train import train

    overrides = [
        f"trainer.output_dir={out}", "trainer.progress=false", "trainer.max_steps=2",
        "trainer.checkpoint_every=0", "trainer.sample_every=0", "trainer.warmup_steps=0",
        "trainer.log_every=1", "trainer.plot=false", "data.cache=null", "data.resolution=16",
        "data.num_samples=8", "data.batch_size=4", "model.resolution=16",
        "model.block_out_channels=[8,16]", "model.norm_num_groups=4", *extra,
    ]
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        result = train(load_config(ROOT / "configs" / config, overrides))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert result.step == 2
    return out
