"""PTA model comparison on free-spectrum (ceffyl / PTArcade) data: physics, refit likelihood,
sampling, grid evidence, and the flow-evidence Bayes-factor pipeline (``python -m flows.pta``).

References:
    A. Afzal et al. (NANOGrav), "The NANOGrav 15 yr Data Set: Search for Signals from New
    Physics", ApJL 951 L11 (2023), arXiv:2306.17219.
    A. Mitridate et al., "PTArcade", arXiv:2306.16377.
"""

from .data import FreeSpectrum, load_free_spectrum
from .grid import GridEvidence, grid_evidence
from .likelihood import FreeSpectrumLikelihood, ModelPosterior
from .models import SpectralModel, available_models, build_model
from .priors import BivariateNormal, Prior, Uniform
from .sampling import ChainResult, run_ensembles

__all__ = [
    "BivariateNormal",
    "ChainResult",
    "FreeSpectrum",
    "FreeSpectrumLikelihood",
    "GridEvidence",
    "ModelPosterior",
    "Prior",
    "SpectralModel",
    "Uniform",
    "available_models",
    "build_model",
    "grid_evidence",
    "load_free_spectrum",
    "run_ensembles",
]
