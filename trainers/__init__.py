"""normkit.trainers: one Accelerate trainer, typed configs, checkpoints, optimizers.

Model kinds and datasets are looked up in :mod:`core.registry` (re-exported here).

>>> from trainers import load_config
>>> cfg = load_config("configs/smoke.yaml", ["trainer.max_steps=5"])
>>> cfg.trainer.max_steps
5
"""

from core.registry import (
    available_datasets,
    available_models,
    get_dataset,
    get_model,
    register_dataset,
    register_model,
)
from trainers.checkpoint import (
    find_checkpoints,
    latest_checkpoint,
    load_checkpoint_config,
    load_checkpoint_model,
)
from trainers.config import (
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    TrainConfig,
    TrainerConfig,
    load_config,
)

__all__ = [
    "DataConfig",
    "ModelConfig",
    "OptimizerConfig",
    "TrainConfig",
    "TrainerConfig",
    "available_datasets",
    "available_models",
    "find_checkpoints",
    "get_dataset",
    "get_model",
    "latest_checkpoint",
    "load_checkpoint_config",
    "load_checkpoint_model",
    "load_config",
    "register_dataset",
    "register_model",
]
