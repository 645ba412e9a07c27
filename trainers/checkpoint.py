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

import re
import shutil
from pathlib import Path
from typing import Any

from trainers import registry
from trainers.config import TrainConfig, _yaml_load, config_from_dict

__all__ = [
    "CHECKPOINT_PATTERN",
    "find_checkpoints",
    "latest_checkpoint",
    "load_checkpoint_config",
    "load_checkpoint_model",
    "resolve_checkpoint",
]

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TMP_PREFIX = ".tmp-checkpoint-"
STATE_FILE = "trainer_state.json"


def _is_complete(folder: Path, require_trainer_state: bool = True) -> bool:
    has_state = (folder / STATE_FILE).is_file() or not require_trainer_state
    return (folder / "config.yaml").is_file() and has_state


def find_checkpoints(
    run_dir: str | Path, require_trainer_state: bool = True
) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run directory as ``(step, path)``, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for child in run_dir.iterdir():
        match = CHECKPOINT_PATTERN.match(child.name)
        if match and child.is_dir() and _is_complete(child, require_trainer_state):
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of ``run_dir``, or None."""
    found = find_checkpoints(run_dir)
    return found[-1][1] if found else None


def resolve_checkpoint(path: str | Path, require_trainer_state: bool = True) -> Path:
    """``path`` itself when it is a checkpoint folder, else the newest checkpoint inside it.

    Sampling needs only ``config.yaml`` and the weights, so ``require_trainer_state=False``
    also accepts a hand-assembled folder without ``trainer_state.json`` (e.g. a shipped model).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path {str(path)!r} does not exist")
    if _is_complete(path, require_trainer_state):
        return path
    found = find_checkpoints(path, require_trainer_state)
    if not found:
        needed = f"config.yaml and {STATE_FILE}" if require_trainer_state else "config.yaml"
        raise FileNotFoundError(
            f"{str(path)!r} is neither a checkpoint folder nor a run directory with complete "
            f"checkpoint-<step> folders (each needs {needed})"
        )
    return found[-1][1]


def load_checkpoint_config(path: str | Path) -> TrainConfig:
    """The resolved config saved in a checkpoint (``path`` may be a run dir: newest one)."""
    folder = resolve_checkpoint(path, require_trainer_state=False)
    with open(folder / "config.yaml") as handle:
        raw = _yaml_load(handle)
    return config_from_dict(raw, check_model=False)


def load_checkpoint_model(path: str | Path, use_ema: bool = True) -> tuple[Any, TrainConfig]:
    """Rebuild the trained model of a checkpoint: ``(model, config)``, model in eval mode.

    ``path`` is a ``checkpoint-<step>`` folder or a run directory (its newest checkpoint).
    ``use_ema`` picks the EMA weights when the checkpoint has them. ``config.model.name`` (or
    ``config["model"]["name"]``) is the registered model name.
    """
    folder = resolve_checkpoint(path, require_trainer_state=False)  # inference needs no state
    config = load_checkpoint_config(folder)
    model_cls = registry.get_model(config.model.name)
    weights = folder / "ema" if use_ema and (folder / "ema").is_dir() else folder / "model"
    if not weights.is_dir():
        raise FileNotFoundError(f"checkpoint {str(folder)!r} has no model folder {weights.name!r}")
    model = model_cls.from_pretrained(str(weights))
    model.eval()
    return model, config


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
