"""Opt-in compiled kernels: ``torch.compile`` of the norms' forward and backward bodies.

No paper: an execution switch for the layers of this package. The eager kernels reuse torch's
fused LayerNorm / GroupNorm kernels, but a norm that is not an affine variant of one still makes
several passes over memory. Compiled, the same bodies become one or two loops per pass of the
formula (inductor's C++ on a CPU, Triton on CUDA), which is what brings RMSNorm, CRMSNorm,
EvoNorm and Region Normalization to their speed targets on a CPU.

Off by default: compiling takes tens of seconds per kernel, shape and dtype on a first run
(inductor's on-disk cache makes later runs start faster), which only pays for long training
runs. Switch it on with ``norms.use_compiled_kernels()`` or the environment variable
``NORMKIT_COMPILED_KERNELS=1``; nothing is compiled until a kernel is first called, and where
``torch.compile`` fails (no C++ compiler, an unsupported platform) one warning is printed and
the eager kernels are used from then on.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["Kernel", "compiled_kernels_enabled", "use_compiled_kernels"]

_ENV = "NORMKIT_COMPILED_KERNELS"
_state = {"enabled": os.environ.get(_ENV, "0") not in ("", "0")}
_COMPILED: dict[Kernel, Callable[..., Any]] = {}  # each kernel's torch.compile wrapper


def use_compiled_kernels(enabled: bool = True) -> None:
    """Run the norms' kernels through ``torch.compile`` (True) or eagerly (False)."""
    _state["enabled"] = bool(enabled)


def compiled_kernels_enabled() -> bool:
    """Whether the norms' kernels run compiled."""
    return _state["enabled"]


class Kernel:
    """A tensor function that runs through ``torch.compile`` while compiled kernels are on.

    ``Kernel(fn)(*args)`` is ``fn(*args)`` when they are off, and ``torch.compile(fn)(*args)``
    when they are on (compiled on first use; dynamo recompiles for new shapes and dtypes).
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.__doc__, self.__name__ = fn.__doc__, fn.__name__

    def __call__(self, *args: Any) -> Any:
        if not _state["enabled"]:
            return self.fn(*args)
        try:
            if self not in _COMPILED:
                _COMPILED[self] = torch.compile(self.fn)
            compiled = _COMPILED[self]
        except Exception as error:  # torch.compile refuses this platform or Python
            return self._fall_back(error, args)
        try:
            return compiled(*args)
        except Exception as error:
            if not _is_compile_failure(error):
                raise
            return self._fall_back(error, args)

    def _fall_back(self, error: Exception, args: tuple) -> Any:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        warnings.warn(
            f"norms: torch.compile failed ({type(error).__name__}: {first_line}); "
            "using the eager kernels",
            RuntimeWarning,
            stacklevel=3,
        )
        _state["enabled"] = False
        return self.fn(*args)


def _is_compile_failure(error: Exception) -> bool:
    """Errors raised by dynamo / inductor (a missing compiler, say), not by the arithmetic."""
    return (type(error).__module__ or "").startswith(("torch._dynamo", "torch._inductor"))
