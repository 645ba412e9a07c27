"""The free-spectrum data sets that ship inside flows.pta, and the frequency-bin defaults.

``ng15-hd`` (the default) and ``ng15-cp``: the NANOGrav 15-year free spectrum with
Hellings-Downs correlations and as a common uncorrelated process, in the ceffyl / PTArcade
layout (see resources/ng15/PROVENANCE.md). No imports beyond the standard library, so the
command line can show its defaults without loading NumPy or torch.

References:
    G. Agazie et al. (NANOGrav), arXiv:2306.16213 (the data set).
    A. Mitridate et al., "PTArcade", arXiv:2306.16377 (the ceffyl files).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BUNDLED", "DEFAULT_DATA", "DEFAULT_FREQUENCIES", "MAX_FREQUENCIES"]

MAX_FREQUENCIES = 30
DEFAULT_FREQUENCIES = 14  # the bins of NANOGrav's new-physics search

_NG15 = Path(__file__).resolve().parent / "resources" / "ng15"
BUNDLED = {"ng15-hd": _NG15 / "hd", "ng15-cp": _NG15 / "cp"}
DEFAULT_DATA = "ng15-hd"
