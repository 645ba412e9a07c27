"""Exponential moving average of a model's weights, buffers included.

``ema <- decay * ema + (1 - decay) * weights`` after every optimizer step, as in DiT (Peebles &
Xie, "Scalable Diffusion Models with Transformers", arXiv:2212.09748) and Polyak & Juditsky
(1992). Unlike diffusers' ``EMAModel``, floating-point buffers (running statistics of
BatchNorm-like norms) are copied too, so running-statistics norms see the statistics of the
weights they sit next to.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """A frozen copy of ``model`` (eval mode) tracking its weights with ``decay``."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay {decay} must lie in [0, 1)")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model`` (the unwrapped training model)."""
        ema_params = dict(self.model.named_parameters())
        for name, param in model.named_parameters():
            ema_params[name].lerp_(param.detach().to(ema_params[name].dtype), 1.0 - self.decay)
        ema_buffers = dict(self.model.named_buffers())
        for name, buffer in model.named_buffers():
            ema_buffers[name].copy_(buffer)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "num_updates": self.num_updates,
                "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.num_updates = state["num_updates"]
