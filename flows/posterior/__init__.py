"""normkit.flows.posterior: density flows for posterior samples, evidence and Bayes factors.

>>> import numpy as np
>>> from flows.posterior import evidence, fit_flow
"""

from flows.posterior.autoregressive import ParameterTransformerFlow
from flows.posterior.base import PosteriorFlow
from flows.posterior.evidence import (
    BayesFactor,
    EvidenceResult,
    ImportanceResult,
    bayes_factor,
    evidence,
)
from flows.posterior.fit import FitReport, FitResult, fit_flow
from flows.posterior.spline import SplineFlow
from flows.posterior.transforms import Preprocessing

__all__ = [
    "BayesFactor",
    "EvidenceResult",
    "ImportanceResult",
    "bayes_factor",
    "evidence",
    "FitReport",
    "FitResult",
    "ParameterTransformerFlow",
    "PosteriorFlow",
    "Preprocessing",
    "SplineFlow",
    "fit_flow",
]
