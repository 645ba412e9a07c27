"""normkit.flows.video: STARFlow-V style video flows (Apple 2025, "STARFlow-V: End-to-End Video
Generative Modeling with Normalizing Flows").

- :mod:`flows.video.block`: the deep global block and its frame-by-frame inverse;
- :mod:`flows.video.model`: :class:`VideoTransformerFlow`, the global-local flow;
- :mod:`flows.video.denoiser`: the flow-score-matching denoiser and its own training step;
- :mod:`flows.video.sampling`: :class:`VideoFlowSampler` and ``sample.py``'s entry point;
- :mod:`flows.video.data`, :mod:`flows.video.io`, :mod:`flows.video.text`: datasets, video
  files, the prompt tokenizer;
- ``python -m flows.video``: the sampling command line.

Names are imported lazily, so that the datasets load without the model's dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "GlobalVideoBlock": "flows.video.block",
    "VideoTransformerFlow": "flows.video.model",
    "FlowScoreDenoiser": "flows.video.denoiser",
    "VideoFlowSampler": "flows.video.sampling",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'flows.video' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
