"""One registry for every normalization layer, so configs choose a norm by name.

Each entry records which input layouts the layer accepts:

- ``"tokens"``: channels-last, ``(..., C)``, e.g. transformer tokens ``(B, N, C)``;
- ``"maps"``: channels-first, ``(B, C, *)``, e.g. conv feature maps ``(B, C, H, W)`` or the
  ``(B, C, HW)`` tensors that diffusers' attention GroupNorm sees.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "LAYOUTS",
    "in_dtype_of",
    "NormSpec",
    "available_norms",
    "build_norm",
    "check_layout",
    "norm_spec",
    "register_norm",
]

LAYOUTS = ("tokens", "maps")


@dataclass(frozen=True)
class NormSpec:
    """What the registry knows about one norm: how to build it and what it accepts."""

    name: str
    factory: Callable[..., nn.Module]
    layouts: tuple[str, ...]
    running_stats: bool
    summary: str


_REGISTRY: dict[str, NormSpec] = {}


def register_norm(
    name: str,
    layouts: Iterable[str],
    running_stats: bool = False,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Class/function decorator adding a norm factory ``factory(num_features, **options)``."""
    layouts = tuple(layouts)
    bad = [layout for layout in layouts if layout not in LAYOUTS]
    if bad or not layouts:
        raise ValueError(f"norm {name!r}: layouts {layouts} invalid; allowed: {', '.join(LAYOUTS)}")

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"norm {name!r} is registered twice")
        doc = (factory.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = NormSpec(name, factory, layouts, running_stats, doc[0] if doc else "")
        return factory

    return decorator


def _ensure_loaded() -> None:
    # The layer modules register themselves on import; importing the package does that.
    import norms  # noqa: F401


def available_norms(layout: str | None = None) -> list[str]:
    """Sorted names of the registered norms, optionally only those accepting ``layout``."""
    _ensure_loaded()
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is unknown; choose one of: {', '.join(LAYOUTS)}")
    return sorted(n for n, s in _REGISTRY.items() if layout is None or layout in s.layouts)


def norm_spec(name: str) -> NormSpec:
    """The registry entry of ``name``; an unknown name lists the known ones."""
    _ensure_loaded()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"norm {name!r} is unknown; choose one of: {known}")
    return _REGISTRY[name]


def build_norm(name: str, num_features: int, **options) -> nn.Module:
    """Build the norm called ``name`` for ``num_features`` channels.

    Example:
        >>> import torch, norms
        >>> layer = norms.build_norm("rmsnorm", 8)
        >>> layer(torch.randn(2, 5, 8)).shape
        torch.Size([2, 5, 8])
    """
    spec = norm_spec(name)
    if not isinstance(num_features, int) or num_features < 1:
        raise ValueError(
            f"norm {name!r}: num_features must be a positive int, got {num_features!r}"
        )
    allowed = _option_names(spec.factory)
    unknown = sorted(set(options) - allowed)
    if unknown:
        choices = ", ".join(sorted(allowed)) or "none"
        raise ValueError(f"norm {name!r}: unknown option(s) {unknown}; allowed: {choices}")
    return spec.factory(num_features, **options)


def _option_names(factory: Callable[..., nn.Module]) -> set[str]:
    """Keyword options a factory accepts besides num_features."""
    params = list(inspect.signature(factory).parameters.values())[1:]
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_layout(x: torch.Tensor, num_features: int, layout: str, layer: str) -> None:
    """Raise a one-line error when ``x`` does not have ``num_features`` channels in ``layout``."""
    if layout == "tokens":
        if x.dim() < 2 or x.shape[-1] != num_features:
            raise ValueError(
                f"{layer} expects channels-last tokens (..., C={num_features}); "
                f"got shape {tuple(x.shape)}"
            )
    elif layout == "maps":
        if x.dim() < 3 or x.shape[1] != num_features:
            raise ValueError(
                f"{layer} expects channels-first maps (B, C={num_features}, *); "
                f"got shape {tuple(x.shape)}"
            )
    else:
        raise ValueError(f"layout {layout!r} is unknown; choose one of: {', '.join(LAYOUTS)}")


def in_dtype_of(x: torch.Tensor, *tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """``tensors`` cast (differentiably) to x's dtype; None stays None.

    Under autocast a norm's float32 parameters and statistics meet bfloat16 inputs; the layers
    compute in the input's dtype, as torch's own LayerNorm and GroupNorm do there.
    """
    return tuple(None if t is None else t.to(x.dtype) for t in tensors)
