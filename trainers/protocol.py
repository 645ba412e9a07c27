"""The small protocol every trainable model offers, so the trainer imports no model internals.

A model is a diffusers-style ``ModelMixin + ConfigMixin`` (``save_pretrained`` /
``from_pretrained`` on a local folder) with:

- ``loss(batch) -> dict[str, torch.Tensor]``: a scalar ``"loss"`` entry to minimise; every other
  scalar entry (e.g. ``"bits_per_dim"``) is logged. ``batch`` is what the dataset's default
  collate yields: a dict of tensors (``"x"`` the data, ``"y"`` labels when there are any).
- optionally ``sample_for_logging(num: int, generator: torch.Generator) -> torch.Tensor``: images
  ``(B, C, H, W)`` or videos ``(B, T, C, H, W)`` in [0, 1], used by the periodic sampling hook.
- optionally ``after_optimizer_step()``: called after every optimizer step (e.g. a jointly
  trained denoiser's own update).
- optionally ``auxiliary_state() -> object with state_dict() / load_state_dict()`` (or None):
  training state outside the model's weights and the trainer's optimizer (e.g. the optimizer of
  a jointly trained denoiser). The trainer saves its ``state_dict()`` in every checkpoint
  (tensors as safetensors, the rest as JSON: dicts, lists, tuples, numbers, strings, None) and
  passes it back to ``load_state_dict`` on resume, so a resumed run reproduces the uninterrupted
  one. The main process's state is saved: keep it identical across ranks (all-reduce).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["TrainableModel"]


@runtime_checkable
class TrainableModel(Protocol):
    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def save_pretrained(self, save_directory: str, **kwargs) -> None: ...
