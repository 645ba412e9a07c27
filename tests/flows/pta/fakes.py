"""Stand-in for flows.pta.compare.run_model in the command-line tests: a ModelResult in
milliseconds (no sampling, no flow), deterministic in the model name."""

from __future__ import annotations

import zlib

import numpy as np

from flows.pta.compare import ModelResult
from flows.pta.models import SpectralModel
from flows.pta.sampling import ChainResult

# names -> (warnings, reliable) for the models that should carry them
FLAGS: dict[str, tuple[list[str], bool]] = {}


def fake_run_model(model: SpectralModel, data: object, **options: object) -> ModelResult:
    seed = zlib.crc32(model.name.encode())
    rng = np.random.default_rng(seed)
    samples = model.prior.sample(2 * 40, rng).reshape(2, 40, model.ndim)
    chains = ChainResult(
        samples=samples, ln_posterior=rng.normal(size=(2, 40)), ensembles=1, walkers=32,
        burn=10, steps=40, thin=1, tau=[2.0], acceptance=[0.3], restarted=0, dropped=0,
        ensemble_means=samples.mean(1), evaluations=1000,
    )
    warnings, reliable = FLAGS.get(model.name, ([], True))
    return ModelResult(
        name=model.name, param_names=model.param_names, ln_z=-20.0 - (seed % 1000) / 250,
        ln_z_err=0.01, estimator="learned harmonic mean", temperature=0.9, ln_z_is=-20.0,
        ln_z_is_err=0.01, agree=True, ln_z_grid=None, ln_z_grid_err=None, chains=chains,
        times={"total": 0.01}, flow_samples=samples.reshape(-1, model.ndim), warnings=warnings,
        diagnostics={"seed": seed}, reliable=reliable,
        unreliable_because=[] if reliable else warnings[:1],
    )
