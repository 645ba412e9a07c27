"""Activation checkpointing and ``torch.compile`` for the trainer's loss.

References: Chen et al., "Training Deep Nets with Sublinear Memory Cost", arXiv:1604.06174
(recompute a block's activations in the backward pass instead of keeping them); Ansel et al.,
"PyTorch 2: Faster Machine Learning Through Dynamic Python Bytecode Transformation and Graph
Compilation", ASPLOS 2024 (``torch.compile``).

``trainer.activation_checkpointing=true``: every ``norms.transformer.TransformerBlock`` keeps only
its input for the backward pass and recomputes the rest there (``torch.utils.checkpoint``,
non-reentrant, RNG state preserved so dropout recomputes the same mask); diffusers models inside
the model (UNets, ControlNets) switch on their own ``enable_gradient_checkpointing``. The blocks
are changed in place without renaming anything (their ``forward`` is wrapped), so parameter
names, state dicts, FSDP units and the EMA copy (taken before) are untouched.

``trainer.compile=true``: ``torch.compile`` of the module whose forward is the model's loss. When
compiling cannot work here (no C++ compiler for inductor on CPU, no Triton on CUDA, a Python
dynamo does not support), the trainer prints one warning line and the run stays eager.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["compile_loss", "compile_unavailable", "enable_activation_checkpointing"]


def _recomputed(forward: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():  # sampling, evaluation: nothing to save
            return forward(*args, **kwargs)
        from torch.utils.checkpoint import checkpoint

        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def enable_activation_checkpointing(model: nn.Module) -> str:
    """Recompute activations per transformer block (or diffusers' way); what was done.

    Raises ValueError when ``model`` has neither a ``TransformerBlock`` nor a diffusers part that
    supports gradient checkpointing.
    """
    from norms.transformer import TransformerBlock

    blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
    for block in blocks:
        block.forward = _recomputed(block.forward)
    parts = [m for m in model.modules()
             if m is not model and getattr(m, "_supports_gradient_checkpointing", False)]
    for part in parts:
        part.enable_gradient_checkpointing()
    done = ([f"{len(blocks)} TransformerBlock"] if blocks else []) + [
        f"{type(p).__name__} (diffusers gradient checkpointing)" for p in parts]
    if not done:
        raise ValueError(f"trainer.activation_checkpointing=true: {type(model).__name__} has no "
                         "norms.transformer.TransformerBlock and no diffusers part with gradient "
                         "checkpointing; set trainer.activation_checkpointing=false")
    return ", ".join(done)


def compile_unavailable(device: torch.device) -> str | None:
    """Why ``torch.compile`` (inductor) cannot run on ``device`` here, or None when it can."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton is not installed"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as error:  # inductor's own compiler search failed: tell why, run eager
        return f"inductor finds no C++ compiler ({type(error).__name__})"
    return None


def compile_loss(module: nn.Module, device: torch.device) -> tuple[Callable[..., Any], str | None]:
    """``(torch.compile(module), None)``, or ``(module, why not)`` where compiling cannot work."""
    reason = compile_unavailable(device)
    if reason is not None:
        return module, reason
    return torch.compile(module), None
