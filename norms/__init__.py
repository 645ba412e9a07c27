"""normkit.norms: the shared normalization backbones, chosen by name.

>>> import norms
>>> layer = norms.build_norm("layernorm", 16)
>>> "rmsnorm" in norms.available_norms()
True
"""

from norms import (  # noqa: F401  (importing the layer modules registers them)
    basic,
    batchchannel,
    crms,
    evonorm,
    linear_attention,
    nap,
    powernorm,
    region,
    removal,
    selu,
    unified,
)
from norms.basic import BatchNorm, GroupNorm, IdentityNorm, LayerNorm, RMSNorm
from norms.batchchannel import (
    BatchChannelNorm,
    WSConv2d,
    remove_weight_standardization,
    standardize_weight,
    weight_standardization,
)
from norms.crms import CRMSNorm
from norms.evonorm import EvoNormB0, EvoNormS0
from norms.fusion import compiled_kernels_enabled, use_compiled_kernels
from norms.nap import NaPProjector, insert_norms
from norms.powernorm import PowerNorm
from norms.region import RegionNormB, RegionNormL
from norms.registry import (
    LAYOUTS,
    available_norms,
    build_norm,
    check_layout,
    norm_spec,
    register_norm,
)
from norms.removal import FakeLayerNorm, fold_norm_into_linear, norm_affine
from norms.selu import SELUMLP, init_selu_, lecun_normal_
from norms.unified import UnifiedNorm

__all__ = [
    "LAYOUTS",
    "SELUMLP",
    "BatchChannelNorm",
    "BatchNorm",
    "CRMSNorm",
    "EvoNormB0",
    "EvoNormS0",
    "FakeLayerNorm",
    "GroupNorm",
    "IdentityNorm",
    "LayerNorm",
    "NaPProjector",
    "PowerNorm",
    "RMSNorm",
    "RegionNormB",
    "RegionNormL",
    "UnifiedNorm",
    "WSConv2d",
    "available_norms",
    "build_norm",
    "check_layout",
    "compiled_kernels_enabled",
    "fold_norm_into_linear",
    "init_selu_",
    "insert_norms",
    "lecun_normal_",
    "norm_affine",
    "norm_spec",
    "register_norm",
    "remove_weight_standardization",
    "standardize_weight",
    "use_compiled_kernels",
    "weight_standardization",
]
