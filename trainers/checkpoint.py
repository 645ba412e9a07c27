"""Checkpoint folders: layout, discovery, atomic writing, exact restoring, pruning, model loading.

Layout (written by ``write_checkpoint``)::

    output_dir/
      checkpoint-<step>/
        config.yaml               the full resolved config (rebuilds the model: sample.py uses it)
        model/                    save_pretrained folder of the trained weights (safetensors)
        ema/                      save_pretrained folder of the EMA weights (when trainer.ema_decay)
        training_state.safetensors  optimizer moments, NaP targets, the model's auxiliary tensors
        training_state.json       the rest of that state: optimizer param groups and step counts,
                                  scheduler, EMA update count, auxiliary scalars, grad scaler
                                  (under FSDP2: training_state-rank<r>.* written by each rank,
                                  holding its shards; model/ and ema/ hold gathered weights)
        rng-rank<r>.json          python / numpy / torch / cuda generator states of rank r
        trainer_state.json        step, epoch, batches consumed in the epoch, non-finite counters,
                                  run id, world size (written last: its presence marks completion)

No file of a checkpoint is a pickle and none is ever read with one: tensors are safetensors,
everything else JSON (``trainers.state_io``, ``trainers.rng``). A checkpoint is written into
``output_dir/.tmp-checkpoint-<step>`` and renamed when complete, so a crash never leaves a
``checkpoint-<step>`` folder that looks complete; leftover temporary folders are ignored (and
removed by the next run). Weights with a non-finite value are never written. Pruning deletes only
checkpoints whose ``trainer_state.json`` names the current run. Follows the checkpoint
conventions of Accelerate (Gugger et al., https://github.com/huggingface/accelerate) and
diffusers' training examples (von Platen et al., https://github.com/huggingface/diffusers).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
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
from trainers.state_io import (
    CheckpointError,
    load_state,
    read_json,
    read_tensors,
    save_state,
    state_file_names,
)

__all__ = [  # the finding and loading functions live in core.checkpoint (shared with sample.py)
    "CHECKPOINT_PATTERN",
    "STATE_FILE",
    "CheckpointError",
    "NonFiniteWeightsError",
    "TrainerState",
    "Trainables",
    "check_resumable",
    "find_checkpoints",
    "latest_checkpoint",
    "load_checkpoint_config",
    "load_checkpoint_model",
    "prune_checkpoints",
    "resolve_checkpoint",
    "restore_checkpoint",
    "write_checkpoint",
]

TMP_PREFIX = ".tmp-checkpoint-"
TRAINING_STATE = "training_state"


def rng_file_name(rank: int) -> str:
    """The file of rank ``rank``'s generator states (``trainers.rng``) in a checkpoint."""
    return f"rng-rank{rank}.json"


class NonFiniteWeightsError(RuntimeError):
    """The weights (or EMA weights) hold NaN/inf: no checkpoint is written."""


@dataclass
class TrainerState:
    """Where the loop stands: ``trainer_state.json`` of a checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    nonfinite_total: int = 0
    nonfinite_consecutive: int = 0
    run_id: str = ""
    world_size: int = 1

    @classmethod
    def read(cls, path: Path) -> TrainerState:
        raw = read_json(path)
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        if not isinstance(raw, dict) or set(raw) != set(fields):
            keys = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            raise CheckpointError(f"checkpoint file {str(path)!r} holds {keys}; expected the "
                                  f"keys {sorted(fields)}")
        for key, value in raw.items():
            good = isinstance(value, str) if fields[key] == "str" else (
                isinstance(value, int) and not isinstance(value, bool) and value >= 0)
            if not good:
                raise CheckpointError(f"checkpoint file {str(path)!r}: {key}={value!r} is not a "
                                      f"{'string' if fields[key] == 'str' else 'count >= 0'}")
        return cls(**raw)


@dataclass
class Trainables:
    """Everything a checkpoint saves and a resume restores besides the loop position."""

    accelerator: Any
    wrapper: Any          # the prepared (DDP/FSDP) module whose forward is the model's loss
    model: Any            # the unwrapped model
    optimizer: Any
    scheduler: Any
    ema: Any = None       # trainers.ema.EMA
    projector: Any = None  # NaP targets (anything with state_dict/load_state_dict)
    sharded: bool = False  # FSDP2 (trainers.sharding): weights, grads and moments are DTensors

    def auxiliary(self) -> Any:
        """The model's optional ``auxiliary_state()`` (trainers.protocol), or None."""
        method = getattr(self.model, "auxiliary_state", None)
        return method() if callable(method) else None

    def training_state(self) -> dict[str, Any]:
        """Optimizer, scheduler, EMA count, NaP targets, auxiliary state, grad scaler."""
        state: dict[str, Any] = {"optimizer_class": self._optimizer_class(),
                                 "optimizer": self.optimizer.state_dict(),
                                 "scheduler": self.scheduler.state_dict()}
        if self.ema is not None:
            state["ema_updates"] = self.ema.num_updates
        for key, part in (("nap", self.projector), ("auxiliary", self.auxiliary()),
                          ("grad_scaler", self.accelerator.scaler)):
            if part is not None and hasattr(part, "state_dict"):
                state[key] = part.state_dict()
        return state

    def _optimizer_class(self) -> str:
        return type(getattr(self.optimizer, "optimizer", self.optimizer)).__name__  # unwrapped

    def load_training_state(self, state: dict[str, Any]) -> None:
        if state["optimizer_class"] != self._optimizer_class():
            raise ValueError(f"it holds {state['optimizer_class']} optimizer state; this run "
                             f"builds {self._optimizer_class()} (optimizer.name)")
        if self.sharded:
            from trainers.sharding import restore_optimizer_shards

            restore_optimizer_shards(self.optimizer, state["optimizer"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.num_updates = state["ema_updates"]
        for key, part in (("nap", self.projector), ("auxiliary", self.auxiliary()),
                          ("grad_scaler", self.accelerator.scaler)):
            if part is not None and hasattr(part, "load_state_dict"):
                part.load_state_dict(state[key])

    def nonfinite_values(self) -> int:
        """NaN/inf values in the weights, buffers and EMA weights, summed over ranks."""
        import torch

        modules = [self.model] + ([self.ema.model] if self.ema is not None else [])
        counts = [(~torch.isfinite(_local(t))).sum() for m in modules
                  for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()]
        total = torch.stack(counts).sum() if counts else torch.zeros((), dtype=torch.long)
        return int(self.accelerator.reduce(total.to(self.accelerator.device), "sum"))


def _local(tensor: Any) -> Any:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor  # a DTensor's shard


# --------------------------------------------------------------------------- reading


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


# --------------------------------------------------------------------------- writing


def _save_model_folder(parts: Trainables, module: Any, path: Path) -> None:
    """save_pretrained of ``module`` (the model or the EMA copy; gathered when sharded)."""
    accelerator = parts.accelerator
    if parts.sharded:
        from trainers.sharding import gathered_copy

        module = gathered_copy(module, accelerator.is_main_process)  # every rank takes part
    if accelerator.is_main_process:
        module.save_pretrained(str(path))


def write_checkpoint_files(
    folder: Path, config: TrainConfig, state: TrainerState, parts: Trainables
) -> None:
    """Everything of one checkpoint into ``folder`` (the temporary one); trainer state last."""
    from trainers.rng import capture_rng_state

    accelerator = parts.accelerator
    rank = accelerator.process_index
    if accelerator.is_main_process:
        folder.mkdir(parents=True)
    accelerator.wait_for_everyone()
    (folder / rng_file_name(rank)).write_text(json.dumps(capture_rng_state()))
    _save_model_folder(parts, parts.model, folder / "model")
    if parts.ema is not None:
        _save_model_folder(parts, parts.ema.model, folder / "ema")
    if parts.sharded:  # every rank holds its own shard of the optimizer state
        save_state(folder, TRAINING_STATE, parts.training_state(), rank=rank)
    elif accelerator.is_main_process:
        save_state(folder, TRAINING_STATE, parts.training_state())
    if accelerator.is_main_process:
        (folder / "config.yaml").write_text(config.to_yaml())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (folder / STATE_FILE).write_text(json.dumps(dataclasses.asdict(state), indent=1))


def write_checkpoint(
    output_dir: Path, config: TrainConfig, state: TrainerState, parts: Trainables
) -> Path:
    """Write ``checkpoint-<step>`` atomically (temporary folder + rename); keep the run's last K.

    Raises ``NonFiniteWeightsError`` (writing nothing) when a weight or EMA weight is not finite.
    """
    bad = parts.nonfinite_values()
    if bad:
        raise NonFiniteWeightsError(f"{bad} weight values (model or EMA) are not finite at step "
                                    f"{state.step}; no checkpoint was written")
    accelerator = parts.accelerator
    final = output_dir / f"checkpoint-{state.step}"
    tmp = output_dir / f"{TMP_PREFIX}{state.step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    write_checkpoint_files(tmp, config, state, parts)
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune_checkpoints(output_dir, config.trainer.keep_last, state.run_id)
    accelerator.wait_for_everyone()
    return final


# --------------------------------------------------------------------------- restoring


def read_weights(folder: Path) -> dict[str, Any]:
    """The tensors of a save_pretrained folder (every ``*.safetensors`` file; nothing else)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"checkpoint folder {str(folder)!r} holds no .safetensors weights")
    tensors: dict[str, Any] = {}
    for path in files:
        tensors.update(read_tensors(path))
    return tensors


def _load_weights(module: Any, folder: Path, sharded: bool = False) -> None:
    weights = read_weights(folder)
    try:
        if sharded:
            from trainers.sharding import load_whole_state_dict

            load_whole_state_dict(module, weights)
        else:
            module.load_state_dict(weights)
    except (RuntimeError, CheckpointError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]  # torch's first line is a heading
        raise CheckpointError(f"the weights in {str(folder)!r} do not fit this model (another "
                              f"architecture or config?): {detail[:200]}") from None


def check_resumable(folder: Path, world_size: int, sharded: bool = False) -> TrainerState:
    """The trainer state of a checkpoint to resume, once its files are known to be there.

    Run by the main process before any rank loads, so a missing file stops every rank with the
    same line (``CheckpointError``); the contents are checked while loading. ``sharded``: this
    run is FSDP2, whose checkpoints keep one training-state file per rank.
    """
    if (folder / "accelerator").is_dir() and not (folder / f"{TRAINING_STATE}.json").exists():
        raise CheckpointError(
            f"checkpoint {str(folder)!r} keeps its training state in Accelerate pickles "
            "(accelerator/), which are never read because a pickle can run code; start a new run "
            "(its model/ folder can still be sampled)")
    state = TrainerState.read(folder / STATE_FILE)
    written_sharded = (folder / f"{TRAINING_STATE}-rank0.json").exists()
    if written_sharded != sharded or (sharded and state.world_size != world_size):
        written = (f"FSDP2 on {state.world_size} ranks" if written_sharded
                   else f"{state.world_size} unsharded process(es)")
        now = f"FSDP2 on {world_size} ranks" if sharded else f"{world_size} unsharded process(es)"
        raise CheckpointError(
            f"checkpoint {str(folder)!r} was written by {written}, this run is {now}: resume it "
            "the way it was written (its model/ folder holds whole weights for sampling or a "
            "new run)")
    ranks = range(world_size) if sharded else [None]  # FSDP2: one training state per rank
    needed = [name for rank in ranks for name in state_file_names(TRAINING_STATE, rank)]
    needed.append("model")
    if state.world_size == world_size:
        needed += [rng_file_name(rank) for rank in range(world_size)]
    missing = [name for name in needed if not (folder / name).exists()]
    if missing:
        raise CheckpointError(f"checkpoint {str(folder)!r} is incomplete: {', '.join(missing)} "
                              "missing; resume from another one with trainer.resume=<path>")
    return state


def restore_checkpoint(folder: Path, parts: Trainables) -> TrainerState:
    """Load a checkpoint into ``parts`` (weights, optimizer, ..., this rank's RNG); its state.

    Every fault of the files (missing, truncated, not JSON/safetensors, another architecture)
    raises ``CheckpointError`` with a one-line message.
    """
    from trainers.rng import restore_rng_state

    accelerator = parts.accelerator
    state = check_resumable(folder, accelerator.num_processes, parts.sharded)
    _load_weights(parts.model, folder / "model", parts.sharded)
    if parts.ema is not None:
        _load_weights(parts.ema.model, folder / "ema", parts.sharded)
    rank = accelerator.process_index if parts.sharded else None
    training = load_state(folder, TRAINING_STATE, rank=rank)
    try:
        parts.load_training_state(training)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
        first = " ".join(str(error).split())[:200]
        raise CheckpointError(f"the training state in {str(folder)!r} does not fit this run "
                              f"(another optimizer, model or config?): {first}") from None
    rng_file = folder / rng_file_name(accelerator.process_index)
    if rng_file.exists() or state.world_size == accelerator.num_processes:
        try:
            restore_rng_state(read_json(rng_file))
        except ValueError as error:
            raise CheckpointError(f"checkpoint file {str(rng_file)!r}: {error}") from None
    return state


# --------------------------------------------------------------------------- housekeeping


def remove_stale_temporaries(run_dir: str | Path) -> None:
    """Delete half-written checkpoints a crashed run left behind."""
    run_dir = Path(run_dir)
    if run_dir.is_dir():
        for child in run_dir.iterdir():
            if child.name.startswith(TMP_PREFIX) and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)


def checkpoint_run_id(folder: Path) -> str | None:
    """The run id in a checkpoint's trainer state, or None when unreadable or absent."""
    try:
        raw = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return raw.get("run_id") if isinstance(raw, dict) else None


def prune_checkpoints(run_dir: str | Path, keep_last: int, run_id: str) -> None:
    """Keep only the newest ``keep_last`` complete checkpoints of run ``run_id``.

    Checkpoints of other runs (or with an unreadable state) are never deleted.
    """
    own = [folder for _, folder in find_checkpoints(run_dir)
           if checkpoint_run_id(folder) == run_id]
    for folder in own[:-keep_last]:
        shutil.rmtree(folder, ignore_errors=True)
