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
- optionally ``batch_limits() -> dict[str, int]``: integer batch entries the model embeds
  (labels, prompt ids) and how many values each takes; the trainer's collate
  (:class:`CheckedCollate`) then refuses an item outside ``0..limit-1`` with one line, on the
  CPU before the batch reaches the device, so ``loss`` never waits on a device to read values.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import default_collate

__all__ = ["CheckedCollate", "TrainableModel"]


@runtime_checkable
class TrainableModel(Protocol):
    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def save_pretrained(self, save_directory: str, **kwargs) -> None: ...


class CheckedCollate:
    """``default_collate``, then each entry named in ``limits`` must hold integers in
    ``0..limit-1`` (a picklable callable, so it also runs in DataLoader workers).

    >>> collate = CheckedCollate({"y": 10})
    >>> collate([{"y": 3}, {"y": 9}])["y"].tolist()
    [3, 9]
    >>> collate([{"y": 3}, {"y": 10}])
    Traceback (most recent call last):
    ...
    ValueError: the dataset gave 'y' values 3..10; the model takes 0..9
    """

    def __init__(self, limits: dict[str, int]) -> None:
        self.limits = dict(limits)

    def __call__(self, items: list[Any]) -> Any:
        batch = default_collate(items)
        for key, limit in self.limits.items():
            values = batch.get(key) if isinstance(batch, dict) else None
            if values is None or not values.numel():
                continue
            if values.is_floating_point() or values.is_complex():
                raise ValueError(f"the dataset gave {key!r} as {values.dtype}; integers expected")
            low, high = int(values.min()), int(values.max())
            if low < 0 or high >= limit:
                raise ValueError(
                    f"the dataset gave {key!r} values {low}..{high}; the model takes 0..{limit - 1}"
                )
        return batch
