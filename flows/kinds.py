"""The model kinds of the flows package, declared for :mod:`core.registry`.

References:
    Zhai et al. Normalizing Flows are Capable Generative Models. arXiv:2412.06329 (TARFlow).
    Gu et al. STARFlow: Scaling Latent Normalizing Flows for High-resolution Image Synthesis.
        arXiv:2506.06276; STARFlow-V (Apple 2025) for video.

Everything is a ``"module:attribute"`` string, imported only when a config, a checkpoint or
``sample.py`` uses the kind, so this module stays cheap to import.
"""

from core.registry import ModelKind, ShippedModel

# The knob names one release used before the "one name per knob" rename.
_OLD_TRANSFORMER_KNOBS = {
    "dim": "width",
    "heads": "num_heads",
    "placement": "norm_placement",
    "label_dropout": "condition_dropout",
    "cond_dropout": "condition_dropout",
}

KINDS = (
    ModelKind(
        name="tarflow",
        model="flows.image:TransformerFlow",
        datasets={
            "digits": "flows.data:digits",
            "lfw_faces": "flows.data:lfw_faces",
            "image_folder": "flows.data:image_folder",
        },
        sampler="flows.sampling:sample_image_flow",
        renamed=_OLD_TRANSFORMER_KNOBS,
        shipped={
            "digits_tarflow": ShippedModel(
                "flows:pretrained/digits_tarflow",
                "class-conditional TARFlow on 8x8 handwritten digits"
                " (sklearn digits, 17 grey levels)",
            ),
        },
    ),
    ModelKind(
        name="video_tarflow",
        model="flows.video.model:VideoTransformerFlow",
        datasets={
            "moving_digits": "flows.video.data:moving_digits",
            "bouncing_shapes": "flows.video.data:bouncing_shapes",
            "tiny_clip": "flows.video.data:tiny_clip",
            "video_folder": "flows.video.data:video_folder",
        },
        sampler="flows.video.sampling:sample_video_flow",
        renamed=_OLD_TRANSFORMER_KNOBS,
        shipped={
            "moving_digits_video": ShippedModel(
                "flows:pretrained/moving_digits_video",
                "text-conditioned STARFlow-V style video flow on moving digits"
                " (stage 2 of 2; stage 1: 5000 steps, lr 1.5e-3; guidance 3)",
            ),
        },
    ),
)
