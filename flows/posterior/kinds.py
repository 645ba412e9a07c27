"""The posterior-flow kinds by name: build one from a preprocessing, or load one from a file.

The kinds are the masked autoregressive spline flow (Durkan et al. 2019, arXiv:1906.04032) and
the transformer over parameter tokens (TARFlow-style, Zhai et al. 2024, arXiv:2412.06329).
"""

from __future__ import annotations

import inspect
from pathlib import Path

from flows.posterior.autoregressive import ParameterTransformerFlow
from flows.posterior.base import PosteriorFlow, read_flow_file
from flows.posterior.spline import SplineFlow
from flows.posterior.transforms import Preprocessing

__all__ = ["FLOWS", "build_flow", "flow_class", "load_flow"]

FLOWS: dict[str, type[PosteriorFlow]] = {
    cls.kind: cls for cls in (SplineFlow, ParameterTransformerFlow)
}


def flow_class(name: str) -> type[PosteriorFlow]:
    """The class of flow kind ``name``; ValueError naming the kinds otherwise."""
    if name not in FLOWS:
        raise ValueError(f"flow {name!r} is unknown; choose one of: {', '.join(FLOWS)}")
    return FLOWS[name]


def build_flow(name: str, preprocess: Preprocessing, **options) -> PosteriorFlow:
    """Instantiate flow ``name`` on top of a preprocessing; unknown options are a ValueError."""
    cls = flow_class(name)
    allowed = [
        p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "preprocess")
    ]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"option {unknown[0]!r} does not apply to the {name} flow; its options are: "
            + ", ".join(allowed)
        )
    return cls(preprocess, **options)


def load_flow(path: str | Path) -> PosteriorFlow:
    """Read a flow of any kind written by ``PosteriorFlow.save`` (never unpickles)."""
    config, tensors = read_flow_file(path)
    kind = config.pop("flow")
    if kind not in FLOWS:
        raise ValueError(f"{str(path)!r} holds an unknown flow kind {kind!r}")
    return FLOWS[kind].from_state(config, tensors, path)
