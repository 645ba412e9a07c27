"""normkit.flows.posterior: density flows for posterior samples, evidence and Bayes factors.

The learned harmonic mean estimator (McEwen et al. 2021, arXiv:2111.12720; Polanska et al.
2024, arXiv:2405.05969) with normalising flows fitted to the chains. Command line:
``python -m flows.posterior chains.npz`` (``python -m flows.evidence`` is the same).

Everything that needs torch is imported lazily (on first use of its name), so ``--help`` and
``import flows.posterior`` stay fast; the evidence names are imported eagerly because their
module shares its name with the ``evidence`` function (``flows/posterior/evidence.py`` imports
torch only when ``evidence()`` runs).

>>> import numpy as np
>>> from flows.posterior import evidence, fit_flow
"""

from __future__ import annotations

import importlib
from typing import Any

from flows.posterior.evidence import BayesFactor, EvidenceResult, bayes_factor, evidence

_LAZY = {
    "ImportanceResult": "flows.posterior.estimator",
    "FitReport": "flows.posterior.fit",
    "FitResult": "flows.posterior.fit",
    "fit_flow": "flows.posterior.fit",
    "ParameterTransformerFlow": "flows.posterior.autoregressive",
    "PosteriorFlow": "flows.posterior.base",
    "SplineFlow": "flows.posterior.spline",
    "Preprocessing": "flows.posterior.transforms",
    "build_flow": "flows.posterior.kinds",
    "load_flow": "flows.posterior.kinds",
    "Chains": "flows.posterior.readers",
    "load_chains": "flows.posterior.readers",
    "corner_plot": "flows.posterior.plot",
}

__all__ = ["BayesFactor", "EvidenceResult", "bayes_factor", "evidence", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'flows.posterior' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
