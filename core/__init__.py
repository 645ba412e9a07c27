"""normkit.core: what flows, diffusion, trainers and sample.py share, one job per module.

- :mod:`core.registry`: the one model-kind registry (model class, datasets, sampler, renamed
  knobs and shipped models of each kind, as lazy ``"module:attribute"`` strings).
- :mod:`core.checkpoint`: checkpoint folders, run folders and shipped names -> a loaded model.
- :mod:`core.latent`: the latent space of a local, frozen diffusers AutoencoderKL.
- :mod:`core.images`: image and video grids written to (and read back from) PNG files.
- :mod:`core.cli`: the conventions every command line follows (one-line errors, JSON output).

``core`` imports torch (diffusers only when a latent space is loaded) and nothing of normkit,
so every other package may import it. Import the submodules themselves; this file imports none.
"""
