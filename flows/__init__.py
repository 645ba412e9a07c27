"""normkit.flows: transformer autoregressive flows (TARFlow / STARFlow) and their samplers.

The model kinds of this package (``tarflow``, ``video_tarflow``: model class, datasets,
sampler, shipped models) are declared in :mod:`flows.kinds` for :mod:`core.registry`. The
classes below are imported lazily, so that ``import flows`` (and ``sample.py``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_LAZY = {
    "AutoregressiveBlock": "flows.autoregressive",
    "Permutation": "flows.autoregressive",
    "TransformerFlow": "flows.image",
    "VideoTransformerFlow": "flows.video",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'flows' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
