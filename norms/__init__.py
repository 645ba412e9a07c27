"""normkit.norms: the shared normalization backbones, chosen by name.

>>> import norms
>>> layer = norms.build_norm("layernorm", 16)
>>> "rmsnorm" in norms.available_norms()
True
"""

from norms import basic  # noqa: F401  (registers the layers)
from norms.registry import (
    LAYOUTS,
    available_norms,
    build_norm,
    check_layout,
    norm_spec,
    register_norm,
)

__all__ = [
    "LAYOUTS",
    "available_norms",
    "build_norm",
    "check_layout",
    "norm_spec",
    "register_norm",
]
