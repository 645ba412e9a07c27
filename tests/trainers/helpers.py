"""Helpers shared by the trainer tests: the smoke config and the CLI run in this process."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
QUIET = ["trainer.progress=false", "trainer.plot=false", "trainer.sample_every=0"]


def run_cli(run: Path, *overrides: str) -> int:
    """``python -m trainers.train --config configs/smoke.yaml`` into ``run``; the exit code."""
    from accelerate.state import AcceleratorState

    from trainers.train import main

    AcceleratorState._reset_state(reset_partial_state=True)  # several runs in one test
    return main(["--config", str(SMOKE), f"trainer.output_dir={run}", *QUIET, *overrides])
