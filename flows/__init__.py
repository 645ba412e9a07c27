"""normkit.flows: transformer autoregressive flows (TARFlow / STARFlow) and their samplers.

Names are imported lazily so that ``import flows`` (and ``sample.py``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> (module, attribute); the trainer's registry resolves "flows:<name>" through it
_LAZY = {
    "AutoregressiveBlock": ("flows.autoregressive", "AutoregressiveBlock"),
    "Permutation": ("flows.autoregressive", "Permutation"),
    "TransformerFlow": ("flows.image", "TransformerFlow"),
    "DigitsDataset": ("flows.data", "digits"),
    "LFWFacesDataset": ("flows.data", "lfw_faces"),
    "ImageFolderDataset": ("flows.data", "image_folder"),
    "VideoTransformerFlow": ("flows.video.model", "VideoTransformerFlow"),
    "MovingDigitsDataset": ("flows.video.data", "moving_digits"),
    "BouncingShapesDataset": ("flows.video.data", "bouncing_shapes"),
    "TinyClipDataset": ("flows.video.data", "tiny_clip"),
    "VideoFolderDataset": ("flows.video.data", "video_folder"),
}

__all__ = sorted(name for name, (module, _) in _LAZY.items() if "video" not in module)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'flows' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(module), attribute)
