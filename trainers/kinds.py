"""The trainer's own model kinds, declared for :mod:`core.registry`: ``smoke_mlp`` and
``smoke_transformer``, both on ``smoke``.

Tiny denoising regressors (see :mod:`trainers.smoke`) that train in seconds: the trainer's smoke
tests and first example (the transformer one carries the blocks FSDP2 and activation
checkpointing act on). They have no sampler and ship no weights.
"""

from core.registry import ModelKind

KINDS = (
    ModelKind(
        name="smoke_mlp",
        model="trainers.smoke:SmokeMLP",
        datasets={"smoke": "trainers.smoke:SmokeDataset"},
    ),
    ModelKind(
        name="smoke_transformer",
        model="trainers.smoke:SmokeTransformer",
        datasets={"smoke": "trainers.smoke:SmokeDataset"},
    ),
)
