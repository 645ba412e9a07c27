"""The model kinds of the diffusion package, declared for :mod:`core.registry`.

References:
    Huang, Huang, Chen, Xu, Guo. HumanNorm: Learning Normal Diffusion Model for High-quality and
        Realistic 3D Human Generation. CVPR 2024, arXiv:2310.01406 (normal-adapted and
        normal-aligned diffusion).

Everything is a ``"module:attribute"`` string, imported only when a config, a checkpoint or
``sample.py`` uses the kind, so this module stays cheap to import (no diffusers).
"""

from core.registry import ModelKind, ShippedModel

# The knob names one release used before the "one name per knob" rename.
_OLD_KNOBS = {"label_dropout": "condition_dropout", "cond_dropout": "condition_dropout"}
_DATASETS = {"normal_maps": "diffusion.data:NormalMapDataset"}

KINDS = (
    ModelKind(
        name="normal_adapted",
        model="diffusion.models:NormalAdaptedDiffusion",
        datasets=_DATASETS,
        sampler="diffusion.sampling:sample_adapted_checkpoint",
        renamed=_OLD_KNOBS,
        shipped={
            "normal_adapted": ShippedModel(
                "diffusion:pretrained/normal_adapted",
                "normal maps of rendered figures from view/framing prompts"
                " (stage 2 of 2; stage 1: 3000 steps, lr 1e-3)",
            ),
        },
    ),
    ModelKind(
        name="normal_aligned",
        model="diffusion.models:NormalAlignedDiffusion",
        datasets=_DATASETS,
        sampler="diffusion.sampling:sample_aligned_checkpoint",
        renamed=_OLD_KNOBS,
        shipped={
            "normal_aligned": ShippedModel(
                "diffusion:pretrained/normal_aligned",
                "a shaded image following a given normal map"
                " (stage 2 of 2; stage 1: 1500 steps, lr 1e-3)",
            ),
        },
    ),
)
