"""PTA model comparison on free-spectrum (ceffyl / PTArcade) data: physics, refit likelihood,
sampling, grid evidence, and the flow-evidence Bayes-factor pipeline (``python -m flows.pta``).

Names are imported lazily, so that ``python -m flows.pta --help`` does not load torch.

References:
    A. Afzal et al. (NANOGrav), "The NANOGrav 15 yr Data Set: Search for Signals from New
    Physics", ApJL 951 L11 (2023), arXiv:2306.16219.
    A. Mitridate et al., "PTArcade", arXiv:2306.16377.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "BivariateNormal": "priors",
    "ChainResult": "sampling",
    "Comparison": "compare",
    "FreeSpectrum": "data",
    "FreeSpectrumLikelihood": "likelihood",
    "GridEvidence": "grid",
    "ModelPosterior": "likelihood",
    "ModelResult": "compare",
    "Prior": "priors",
    "SpectralModel": "models",
    "Uniform": "priors",
    "available_models": "models",
    "build_model": "models",
    "compare_models": "compare",
    "grid_evidence": "grid",
    "load_free_spectrum": "data",
    "run_ensembles": "sampling",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'flows.pta' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
