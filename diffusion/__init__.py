"""normkit.diffusion: normal-adapted and normal-aligned diffusion on diffusers (see the README).

References:
    Huang, Huang, Chen, Xu, Guo. HumanNorm: Learning Normal Diffusion Model for High-quality and
        Realistic 3D Human Generation. CVPR 2024, arXiv:2310.01406.

Heavy submodules (diffusers models, pipelines) are imported lazily on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "NormalMapDataset": "data",
    "prompt_to_label": "data",
    "label_to_prompt": "data",
    "NormalMapRenderer": "render",
    "swap_norms": "norm_swap",
    "NormalAdaptedDiffusion": "models",
    "NormalAlignedDiffusion": "models",
    "NormalAdaptedPipeline": "pipelines",
    "NormalAlignedPipeline": "pipelines",
    "sample_normals": "sampling",
    "sample_aligned": "sampling",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'diffusion' has no attribute {name!r}")
