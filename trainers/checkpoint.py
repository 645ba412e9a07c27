"""Checkpoint folders: layout, discovery, atomic publication and model loading.

Layout (written by ``trainers.train``)::

    output_dir/
      checkpoint-<step>/
        config.yaml          the full resolved config (rebuilds the model: sample.py uses it)
        model/               save_pretrained folder of the trained weights
        ema/                 save_pretrained folder of the EMA weights (when trainer.ema_decay)
        accelerator/         accelerate save_state: optimizer, scheduler, EMA, RNG of every rank
        trainer_state.json   step, epoch, batches consumed in the epoch, non-finite counters

A checkpoint is written into ``output_dir/.tmp-checkpoint-<step>`` and renamed when complete,
so a crash never leaves a ``checkpoint-<step>`` folder that looks complete; leftover temporary
folders are ignored (and removed by the next run). Follows the checkpoint conventions of
Accelerate (Gugger et al., https://github.com/huggingface/accelerate) and diffusers' training
examples (von Platen et al., https://github.com/huggingface/diffusers).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from core.checkpoint import (
    CHECKPOINT_PATTERN,
    STATE_FILE,
    find_checkpoints,
    latest_checkpoint,
    load_model,
    resolve_checkpoint,
)
from trainers.config import TrainConfig, _yaml_load, config_from_dict

__all__ = [
    "CHECKPOINT_PATTERN",
    "STATE_FILE",
    "find_checkpoints",
    "latest_checkpoint",
    "load_checkpoint_config",
    "load_checkpoint_model",
    "resolve_checkpoint",
]  # the finding and loading functions live in core.checkpoint (shared with sample.py)

TMP_PREFIX = ".tmp-checkpoint-"


def load_checkpoint_config(path: str | Path) -> TrainConfig:
    """The resolved config saved in a checkpoint (``path`` may be a run dir: newest one)."""
    folder = resolve_checkpoint(path, require_trainer_state=False)
    with open(folder / "config.yaml") as handle:
        raw = _yaml_load(handle)
    return config_from_dict(raw, check_model=False)


def load_checkpoint_model(path: str | Path, use_ema: bool = True) -> tuple[Any, TrainConfig]:
    """``(model in eval mode, TrainConfig)`` of a checkpoint or run dir (core.checkpoint)."""
    model, raw = load_model(path, use_ema)
    return model, config_from_dict(raw, check_model=False)


def remove_stale_temporaries(run_dir: str | Path) -> None:
    """Delete half-written checkpoints a crashed run left behind."""
    run_dir = Path(run_dir)
    if run_dir.is_dir():
        for child in run_dir.iterdir():
            if child.name.startswith(TMP_PREFIX) and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> None:
    """Keep only the newest ``keep_last`` complete checkpoints."""
    for _, folder in find_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(folder, ignore_errors=True)
