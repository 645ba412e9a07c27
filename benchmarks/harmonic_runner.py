r"""Run the harmonic package's learned harmonic mean on chains from an .npz file; print JSON.

Runs inside a separate virtual environment that has harmonic (JAX) installed; called by
``benchmarks/posterior.py`` as a subprocess so that JAX never enters normkit's environment:

    python -m venv venvs/harmonic && venvs/harmonic/bin/pip install harmonic
    venvs/harmonic/bin/python benchmarks/harmonic_runner.py chains.npz --seed 0

The recipe is harmonic's recommended one (Polanska et al. 2024, arXiv:2405.05969): half of
the chains train a rational-quadratic spline flow on standardised samples, the base
distribution is concentrated by the temperature (0.8), the other half gives the estimate.
Prints {"ln_z", "ln_z_err", "cpu_s", "wall_s"}: ln Z = -ln rho_hat and its error
sigma_rho / rho_hat from harmonic's own estimate of the variance of rho_hat.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("chains", help=".npz with samples (nchains, n, d) and ln_posterior")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--no-standardize", action="store_true")
    args = parser.parse_args()
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    import harmonic as hm
    import jax

    data = np.load(args.chains)
    samples, ln_post = data["samples"], data["ln_posterior"]
    nchains, _, ndim = samples.shape
    chains = hm.Chains(ndim)
    chains.add_chains_3d(samples, ln_post)
    train, infer = hm.utils.split_data(chains, training_proportion=0.5)
    model = hm.model.RQSplineModel(
        ndim, n_layers=args.layers, n_bins=8, hidden_size=[64, 64],
        standardize=not args.no_standardize, temperature=args.temperature,
    )
    model.fit(train.samples, epochs=args.epochs, verbose=False,
              key=jax.random.PRNGKey(args.seed))
    ev = hm.Evidence(infer.nchains, model)
    ev.add_chains(infer)
    ln_rho = float(ev.ln_evidence_inv)
    rel = math.exp(0.5 * float(ev.ln_evidence_inv_var) - ln_rho)
    print(json.dumps({
        "ln_z": -ln_rho, "ln_z_err": rel, "cpu_s": time.process_time() - start_cpu,
        "wall_s": time.perf_counter() - start_wall,
    }))


if __name__ == "__main__":
    main()
