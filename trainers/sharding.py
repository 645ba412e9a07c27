"""FSDP2 in the trainer: one shard unit per transformer block, whole weights out, exact resume.

References: Zhao et al., "PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel",
arXiv:2304.11277, and torch's per-parameter FSDP2 (``torch.distributed.fsdp.fully_shard``,
parameters as DTensors sharded on dim 0); Rajbhandari et al., "ZeRO: Memory Optimizations Toward
Training Trillion Parameter Models", arXiv:1910.02054.

Why the trainer shards and not Accelerate: Accelerate applies FSDP only on accelerators; under
``ACCELERATE_USE_CPU=1`` its FSDP launch config silently becomes plain multi-CPU data parallel.
The trainer therefore reads the FSDP request that ``accelerate launch --config_file
configs/accelerate/fsdp2.yaml`` (or ``--use_fsdp --fsdp_version 2``) puts in the environment and
applies ``fully_shard`` itself, on CPU ranks (gloo) and GPUs (NCCL) alike: the code the tests run
on two CPU ranks is the code that runs on GPUs. Accelerate is then started as plain multi-process
(``accelerator_without_fsdp``) and keeps data loading, autocast and the collectives.

The layout: every module whose class name is in the request (``TransformerBlock`` by default,
``fsdp_transformer_layer_cls_to_wrap``) is its own unit, the trainer's loss wrapper is the root
unit holding the rest (embeddings, heads). Frozen parameters (``requires_grad=False``: e.g. the
video flow's denoiser, trained by its own optimizer) are not sharded and stay whole on every rank.
Weights are fp32 on every rank; ``trainer.mixed_precision=bf16`` autocasts the computation as in
data-parallel runs (the same numerics; the all-gathers carry fp32).

Checkpoints: the model and EMA folders hold whole weights (``gather_state_dict``, written by the
main process, loadable by ``sample.py``); each rank writes its own shard of the optimizer state
(``trainers.state_io`` marks DTensor shards); a resume copies each rank's part of the whole
weights back (``load_whole_state_dict``) and turns the optimizer shards into DTensors again
(``restore_optimizer_shards``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainers.state_io import CheckpointError, LocalShard

__all__ = [
    "FsdpRequest",
    "ShardedLayout",
    "accelerator_without_fsdp",
    "fsdp_request",
    "gather_state_dict",
    "gathered_copy",
    "is_sharded",
    "load_whole_state_dict",
    "local_part",
    "restore_optimizer_shards",
    "shard_like",
    "shard_model",
    "whole",
]

_TRUE = ("1", "true", "yes")


@dataclass(frozen=True)
class FsdpRequest:
    """What the launch asked for: the shard-unit classes and when to free gathered weights."""

    layer_classes: tuple[str, ...] = ("TransformerBlock",)
    reshard_after_forward: bool = True
    activation_checkpointing: bool = False


@dataclass(frozen=True)
class ShardedLayout:
    """What ``shard_model`` did, for the start line."""

    world_size: int
    units: int
    unit_class: str
    ignored: int

    def describe(self) -> str:
        frozen = f", {self.ignored} frozen parameter(s) whole on every rank" if self.ignored else ""
        return (f"FSDP2 over {self.world_size} ranks ({self.units} {self.unit_class} unit(s) + "
                f"root, parameters sharded on dim 0{frozen})")


def fsdp_request(environ: Mapping[str, str] | None = None) -> FsdpRequest | None:
    """The FSDP request of the launch (Accelerate's environment variables), or None."""
    env = os.environ if environ is None else environ
    if env.get("ACCELERATE_USE_FSDP", "false").lower() not in _TRUE:
        return None
    version = env.get("FSDP_VERSION", "1")
    if version != "2":
        raise ValueError(f"the launch asks for FSDP version {version} (fsdp_version); the trainer "
                         "runs FSDP2 only: set fsdp_version: 2 in the accelerate config")
    if env.get("FSDP_OFFLOAD_PARAMS", "false").lower() in _TRUE:
        raise ValueError("the launch asks for FSDP parameter offloading (fsdp_offload_params: "
                         "true), which the trainer does not support; set it to false")
    classes = tuple(c.strip() for c in env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",")
                    if c.strip()) or FsdpRequest.layer_classes
    return FsdpRequest(
        layer_classes=classes,
        reshard_after_forward=env.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() in _TRUE,
        activation_checkpointing=env.get("FSDP_ACTIVATION_CHECKPOINTING", "false").lower()
        in _TRUE,
    )


@contextlib.contextmanager
def accelerator_without_fsdp() -> Iterator[None]:
    """Hide the FSDP request from Accelerate while it starts (the trainer shards instead)."""
    saved = os.environ.pop("ACCELERATE_USE_FSDP", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["ACCELERATE_USE_FSDP"] = saved


def _fsdp_api() -> tuple[Any, Any]:
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
    except ImportError as error:
        raise ValueError(f"FSDP2 needs torch >= 2.7 (torch.distributed.fsdp.fully_shard); this is "
                         f"torch {torch.__version__} ({error})") from None
    return fully_shard, init_device_mesh


def shard_model(
    root: nn.Module, model: nn.Module, request: FsdpRequest, device: torch.device
) -> ShardedLayout:
    """``fully_shard`` every block of ``model`` named by ``request``, then ``root`` (in place).

    ``root`` is the module whose forward the trainer calls (the loss wrapper around ``model``).
    Raises ValueError when ``model`` has no module of the requested classes.
    """
    import torch.distributed as dist

    fully_shard, init_device_mesh = _fsdp_api()
    units = [m for m in model.modules() if type(m).__name__ in request.layer_classes]
    if not units:
        raise ValueError(f"FSDP2: {type(model).__name__} has no module of the class(es) "
                         f"{', '.join(request.layer_classes)} to shard "
                         "(fsdp_transformer_layer_cls_to_wrap in the accelerate config)")
    world, unit_class = dist.get_world_size(), type(units[0]).__name__  # before FSDP renames it
    mesh = init_device_mesh(device.type, (world,))
    frozen = {p for p in root.parameters() if not p.requires_grad}
    for unit in units:
        fully_shard(unit, mesh=mesh, reshard_after_forward=request.reshard_after_forward,
                    ignored_params=frozen)
    fully_shard(root, mesh=mesh, ignored_params=frozen)
    return ShardedLayout(world, len(units), unit_class, len(frozen))


def is_sharded(tensor: Any) -> bool:
    return hasattr(tensor, "full_tensor")


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The full tensor of a DTensor (an all-gather: every rank must call it); others unchanged."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def local_part(like: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """``full`` cut as ``like`` is sharded (a DTensor, no communication), or ``full`` itself."""
    if not is_sharded(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)


def shard_like(copy: nn.Module, model: nn.Module) -> None:
    """Make ``copy``'s parameters (e.g. the EMA's) sharded exactly as ``model``'s are."""
    live = dict(model.named_parameters())
    for name, param in list(copy.named_parameters()):
        if is_sharded(live[name]):
            owner_name, _, leaf = name.rpartition(".")
            owner = copy.get_submodule(owner_name) if owner_name else copy
            sharded = local_part(live[name], param.detach())
            owner.register_parameter(leaf, nn.Parameter(sharded, requires_grad=False))


def gather_state_dict(module: nn.Module, keep: bool) -> dict[str, torch.Tensor] | None:
    """The whole state dict on the CPU where ``keep`` (e.g. the main process), else None.

    A collective: every rank must call it. Tensors are gathered one at a time, so a rank that
    does not keep them never holds more than one whole tensor.
    """
    state = {}
    for key, value in module.state_dict().items():
        full = whole(value).detach()
        if keep:
            state[key] = full.cpu()
    return state if keep else None


def gathered_copy(model: nn.Module, keep: bool) -> nn.Module | None:
    """An unsharded copy of a diffusers ``model`` (same config, whole weights) where ``keep``."""
    state = gather_state_dict(model, keep)
    if state is None:
        return None
    device = _device_of(model)
    # Building a model draws its initial weights: keep the training's random streams untouched.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        copy = type(model).from_config(model.config)
    copy.load_state_dict(state)
    return copy.to(device).train(model.training)


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def load_whole_state_dict(module: nn.Module, full: Mapping[str, torch.Tensor]) -> None:
    """Copy whole weights into a (partly) sharded module: each rank keeps its part.

    Raises ``CheckpointError`` naming the first missing, unexpected or misshapen entry.
    """
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(full)), sorted(set(full) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"missing keys {missing[:3]}, unexpected keys {unexpected[:3]}")
    with torch.no_grad():
        for key, target in own.items():
            source = full[key]
            if tuple(source.shape) != tuple(target.shape):
                raise CheckpointError(f"{key} has shape {tuple(source.shape)}, the model "
                                      f"{tuple(target.shape)}")
            source = source.to(device=target.device, dtype=target.dtype)
            if is_sharded(target):
                target.to_local().copy_(local_part(target, source).to_local())
            else:
                target.copy_(source)


def restore_optimizer_shards(optimizer: Any, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` (an optimizer state dict read back) with its ``LocalShard`` s as DTensors.

    A shard becomes a DTensor with the mesh, placement and global shape of the parameter it
    belongs to (the optimizer's parameters in ``state_dict`` order). Raises ``CheckpointError``
    when a shard does not fit its parameter's local part.
    """
    from torch.distributed.tensor import DTensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, entries in state.get("state", {}).items():
        param = params[index]
        for key, value in entries.items():
            if not isinstance(value, LocalShard):
                continue
            local = param.to_local() if is_sharded(param) else None
            if local is None or tuple(value.tensor.shape) != tuple(local.shape):
                raise CheckpointError(f"optimizer state {index}/{key}: a shard of shape "
                                      f"{tuple(value.tensor.shape)} does not fit its parameter")
            entries[key] = DTensor.from_local(
                value.tensor.to(local.device), param.device_mesh, param.placements,
                run_check=False, shape=param.shape, stride=param.stride())
    return state
