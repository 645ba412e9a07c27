"""The trainer's own model kind, declared for :mod:`core.registry`: ``smoke_mlp`` on ``smoke``.

A tiny denoising regressor (see :mod:`trainers.smoke`) that trains in seconds: the trainer's
smoke test and first example. It has no sampler and ships no weights.
"""

from core.registry import ModelKind

KINDS = (
    ModelKind(
        name="smoke_mlp",
        model="trainers.smoke:SmokeMLP",
        datasets={"smoke": "trainers.smoke:SmokeDataset"},
    ),
)
