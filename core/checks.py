"""Checks shared by the model kinds and CLIs: a bad number in a config, or a device this
machine lacks, gives one ``ValueError`` line that names the setting, the value seen and what is
allowed, instead of a traceback from deep inside torch (a negative tensor dimension, a modulo by
zero, a CUDA driver error)."""

from __future__ import annotations

__all__ = ["require_device", "require_positive"]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require_positive(owner: str, **values: object) -> None:
    """Refuse any value that is not a number > 0; a list or tuple must hold only such numbers.

    >>> require_positive("tarflow", width=64, layers_per_block=(2, 2))
    >>> require_positive("tarflow", width=-1)
    Traceback (most recent call last):
    ...
    ValueError: tarflow: model.width must be a positive number, got -1
    """
    for name, value in values.items():
        many = isinstance(value, (list, tuple))
        items = list(value) if many else [value]
        if items and all(_is_number(v) and v > 0 for v in items):
            continue
        what = "a non-empty list of positive numbers" if many else "a positive number"
        raise ValueError(f"{owner}: model.{name} must be {what}, got {value!r}")


def require_device(device: object, option: str = "--device") -> None:
    """Refuse a CUDA device when torch sees none (checked before any model is loaded).

    ``device``: "cpu", "cuda", "cuda:N" or a ``torch.device``.
    """
    if not str(device).startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"{option} {device} asked for, but torch sees no CUDA device "
                         "(torch.cuda.is_available() is False); use --device cpu")
