r"""Posterior flows and evidence, side by side in one run: ours vs zuko NSF and vs dynesty.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/posterior.py            # full
    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/posterior.py --quick    # smaller

Times are CPU seconds of this process (``time.process_time``) with one torch thread: on a
shared, oversubscribed machine wall-clock time measures the neighbours, CPU time measures the
work. Both sides of every comparison run in the same process on the same data.

1. Density fit: ``flows.posterior.fit_flow`` (masked autoregressive RQ spline, built-in
   whitening) vs ``zuko.flows.NSF`` with the same transforms, hidden sizes and bins, the same
   training rows and held-out rows, the same batch size, learning rate (Adam, cosine decay),
   epoch cap and early stopping on the held-out NLL (best weights restored). zuko gets the
   data standardised per dimension (what a careful user does); both NLLs are reported per
   sample in the original space, next to the exact entropy of the target. Targets: a 22-D
   correlated Gaussian and Haario's 8-D twisted-Gaussian "banana" (x2 += b (x1^2 - 100)).
2. Evidence: a 4-D correlated Gaussian likelihood with a Gaussian prior (ln Z in closed form,
   Z = N(mu_data; mu_0, Sigma_L + Sigma_0)); ours from emcee chains (learned harmonic mean)
   vs dynesty (static nested sampling, 500 live points, dlogz 0.1), several seeds each.
3. harmonic (the JAX learned-harmonic-mean package) is not installed here (no JAX), so it is
   skipped.

References:
    C. Durkan et al., "Neural Spline Flows", arXiv:1906.04032; F. Rozet et al., zuko
    (github.com/probabilists/zuko); J. S. Speagle, "dynesty", arXiv:1904.02180; J. D. McEwen
    et al., arXiv:2111.12720; H. Haario, E. Saksman, J. Tamminen, "Adaptive proposal
    distribution for random walk Metropolis algorithm", Comput. Stat. 14 (1999).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

# benchmarks/ holds scripts named like the packages (norms.py): keep the script folder off the
# import path so `import norms` finds the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from flows.posterior import evidence, fit_flow  # noqa: E402
from flows.posterior.fit import _Adam  # noqa: E402


def gaussian_target(n: int, d: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    a = rng.normal(size=(d, d))
    cov = a @ a.T / d + 0.3 * np.eye(d)
    x = rng.multivariate_normal(np.zeros(d), cov, size=n)
    entropy = 0.5 * d * math.log(2 * math.pi * math.e) + 0.5 * np.linalg.slogdet(cov)[1]
    return x, entropy


def banana_target(n: int, d: int, rng: np.random.Generator, b: float = 0.03):
    """Haario's twisted Gaussian: volume-preserving, so the entropy is the Gaussian's."""
    y = rng.normal(size=(n, d))
    y[:, 0] *= 10.0
    y[:, 1] += b * (y[:, 0] ** 2 - 100.0)
    entropy = 0.5 * d * math.log(2 * math.pi * math.e) + math.log(10.0)
    return y, entropy


def fit_zuko(train, val, *, transforms, hidden, bins, epochs, patience, batch_size, lr, seed):
    """The same loop as fit_flow (Adam, cosine, early stopping) around zuko.flows.NSF."""
    import zuko

    torch.manual_seed(seed)
    mean, std = train.mean(0), train.std(0)
    t_train = torch.as_tensor((train - mean) / std, dtype=torch.float32)
    t_val = torch.as_tensor((val - mean) / std, dtype=torch.float32)
    offset = float(np.log(std).sum())
    flow = zuko.flows.NSF(train.shape[1], transforms=transforms, hidden_features=hidden, bins=bins)
    params = list(flow.parameters())
    opt = _Adam(params, lr, 0.0)
    gen = torch.Generator().manual_seed(seed)

    def evaluate(t):
        with torch.no_grad():
            return -float(
                sum(flow().log_prob(t[i : i + 8192]).sum() for i in range(0, len(t), 8192))
            ) / len(t)

    start = time.process_time()
    best, best_state, since, epoch = evaluate(t_val), copy.deepcopy(flow.state_dict()), 0, 0
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(t_train), generator=gen)
        for i in range(0, len(perm), batch_size):
            loss = -flow().log_prob(t_train[perm[i : i + batch_size]]).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
        opt.lr = lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        val_nll = evaluate(t_val)
        if val_nll < best - 1e-4:
            best, best_state, since = val_nll, copy.deepcopy(flow.state_dict()), 0
        else:
            since += 1
            if since >= patience:
                break
    flow.load_state_dict(best_state)
    return best + offset, epoch, time.process_time() - start


def density_benchmark(args) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    settings = dict(
        transforms=4, bins=8, epochs=args.epochs, patience=args.patience, batch_size=512, lr=1e-3
    )
    for name, (x, entropy) in {
        "gaussian-22d": gaussian_target(args.n, 22, rng),
        "banana-8d": banana_target(args.n, 8, rng),
    }.items():
        order = rng.permutation(len(x))
        n_val = len(x) // 5
        val, train = x[order[:n_val]], x[order[n_val:]]
        start = time.process_time()
        _, ours = fit_flow(
            train, validation=val, hidden=(64, 64), seed=0, progress=False, **settings
        )
        ours_time = time.process_time() - start
        zuko_nll, zuko_epochs, zuko_time = fit_zuko(train, val, hidden=(64, 64), seed=0, **settings)
        # CPU time at which our held-out NLL first matched zuko's best (epochs cost the same)
        reached = [e for e, v in enumerate(ours.history_held_out, 1) if v <= zuko_nll]
        match = ours_time * reached[0] / max(ours.epochs, 1) if reached else math.nan
        rows.append(
            dict(
                target=name,
                n=len(x),
                exact=entropy,
                ours_nll=ours.held_out_nll,
                ours_epochs=ours.epochs,
                ours_time=ours_time,
                ours_match_time=match,
                zuko_nll=zuko_nll,
                zuko_epochs=zuko_epochs,
                zuko_time=zuko_time,
            )
        )
        print_density([rows[-1]])
    return rows


def evidence_problem(seed: int, d: int = 4):
    rng = np.random.default_rng(1000 + seed)
    a = rng.normal(size=(d, d))
    cov_l = a @ a.T / d + 0.05 * np.eye(d)
    cov_0 = np.diag(rng.uniform(1.0, 3.0, size=d) ** 2)
    mu_data = rng.normal(size=d) * 0.5
    prec_l, prec_0 = np.linalg.inv(cov_l), np.linalg.inv(cov_0)
    ln_norm_l = -0.5 * (d * math.log(2 * math.pi) + np.linalg.slogdet(cov_l)[1])
    ln_norm_0 = -0.5 * (d * math.log(2 * math.pi) + np.linalg.slogdet(cov_0)[1])

    def ln_like(t):
        r = np.atleast_2d(t) - mu_data
        return ln_norm_l - 0.5 * np.einsum("...i,ij,...j->...", r, prec_l, r)

    def ln_prior(t):
        t = np.atleast_2d(t)
        return ln_norm_0 - 0.5 * np.einsum("...i,ij,...j->...", t, prec_0, t)

    cov_sum = cov_l + cov_0
    truth = -0.5 * (
        d * math.log(2 * math.pi)
        + np.linalg.slogdet(cov_sum)[1]
        + mu_data @ np.linalg.solve(cov_sum, mu_data)
    )
    std_0 = np.sqrt(np.diag(cov_0))
    return ln_like, ln_prior, truth, std_0, mu_data


def evidence_benchmark(args) -> list[dict]:
    import dynesty
    import emcee
    from scipy.stats import norm

    rows = []
    for seed in range(args.seeds):
        ln_like, ln_prior, truth, std_0, mu_data = evidence_problem(seed)
        d = len(mu_data)
        # ours: emcee chains (32 walkers) -> learned harmonic mean
        start = time.process_time()
        np.random.seed(seed)
        sampler = emcee.EnsembleSampler(
            32, d, lambda t, f=ln_like, g=ln_prior: f(t) + g(t), vectorize=True
        )
        p0 = mu_data + 0.01 * np.random.default_rng(seed).normal(size=(32, d))
        sampler.run_mcmc(p0, args.steps + 500)
        x = sampler.get_chain(discard=500).transpose(1, 0, 2)
        lp = sampler.get_log_prob(discard=500).T
        mcmc_time = time.process_time() - start
        start = time.process_time()
        result = evidence(x, lp, seed=seed, progress=False)
        ours_time = time.process_time() - start
        # dynesty: prior transform of the diagonal Gaussian prior
        start = time.process_time()
        nested = dynesty.NestedSampler(
            lambda t, f=ln_like: float(f(t)[0]),
            lambda u, s=std_0: norm.ppf(u) * s,
            d,
            nlive=500,
            rstate=np.random.default_rng(seed),
        )
        nested.run_nested(dlogz=0.1, print_progress=False)
        res = nested.results
        dyn_time = time.process_time() - start
        rows.append(
            dict(
                seed=seed,
                truth=truth,
                ours=result.ln_z,
                ours_err=result.ln_z_err,
                ours_time=ours_time,
                mcmc_time=mcmc_time,
                dyn=float(res.logz[-1]),
                dyn_err=float(res.logzerr[-1]),
                dyn_time=dyn_time,
                warnings=len(result.warnings),
            )
        )
        r = rows[-1]
        print(
            f"seed {seed}: truth {truth:.4f}  ours {r['ours']:.4f} +- {r['ours_err']:.4f} "
            f"({ours_time:.1f} s + emcee {mcmc_time:.1f} s)  dynesty {r['dyn']:.4f} +- "
            f"{r['dyn_err']:.4f} ({dyn_time:.1f} s)",
            flush=True,
        )
    return rows


def print_density(rows: list[dict]) -> None:
    for r in rows:
        print(
            f"{r['target']:<13} n={r['n']:<6} exact {r['exact']:8.4f} | ours NLL "
            f"{r['ours_nll']:8.4f} {r['ours_epochs']:3d} ep {r['ours_time']:7.1f} s | zuko NSF NLL "
            f"{r['zuko_nll']:8.4f} {r['zuko_epochs']:3d} ep {r['zuko_time']:7.1f} s | time ratio "
            f"{r['ours_time'] / r['zuko_time']:.2f} | ours reaches zuko's NLL after "
            f"{r['ours_match_time']:.1f} s (ratio {r['ours_match_time'] / r['zuko_time']:.2f})",
            flush=True,
        )


def summarise_evidence(rows: list[dict]) -> None:
    for key, label in (("ours", "ours (emcee + LHM)"), ("dyn", "dynesty")):
        err = np.array([r[key] - r["truth"] for r in rows])
        z = err / np.array([r[f"{key}_err"] for r in rows])
        t = np.mean([r[f"{key}_time"] for r in rows])
        extra = (
            f" (+ emcee {np.mean([r['mcmc_time'] for r in rows]):.1f} s)" if key == "ours" else ""
        )
        print(
            f"{label:<20} mean |ln Z err| {np.abs(err).mean():.4f}  max {np.abs(err).max():.4f}  "
            f"mean sigma {np.mean([r[f'{key}_err'] for r in rows]):.4f}  z rms "
            f"{math.sqrt(np.mean(z**2)):.2f}  time {t:.1f} s{extra}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k samples, fewer seeds")
    parser.add_argument("--skip-density", action="store_true")
    parser.add_argument("--skip-evidence", action="store_true")
    args = parser.parse_args()
    args.n = 10_000 if args.quick else 50_000
    args.epochs = 30 if args.quick else 100
    args.patience = 5
    args.seeds = 3 if args.quick else 8
    args.steps = 2000 if args.quick else 4000
    torch.set_num_threads(1)
    print("times: CPU seconds, 1 torch thread; harmonic: not installed (needs JAX), skipped")
    if not args.skip_density:
        print("\n== density fit: held-out NLL per sample (nats), same split/loop ==")
        density_benchmark(args)
    if not args.skip_evidence:
        print("\n== evidence: 4-D Gaussian likelihood x Gaussian prior, closed-form ln Z ==")
        summarise_evidence(evidence_benchmark(args))


if __name__ == "__main__":
    main()
