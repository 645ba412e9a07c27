r"""Posterior flows and evidence side by side, each comparison in one run: normkit vs zuko NSF
(density fit), vs dynesty (evidence), vs harmonic (the JAX learned-harmonic-mean package), and
normkit's error calibration over many independent chains, its threads under load.

    OMP_NUM_THREADS=1 python benchmarks/posterior.py --sections all   # long
    OMP_NUM_THREADS=1 python benchmarks/posterior.py --sections readme --seeds 50
    python benchmarks/posterior.py --sections harmonic \
        --harmonic-python venvs/harmonic/bin/python        # see harmonic_runner.py for the venv

Sections (``--sections a,b``):

- ``density``: ``fit_flow`` (masked autoregressive RQ spline, built-in whitening) vs
  ``zuko.flows.NSF`` with the same transforms, hidden sizes, bins, rows, batch size, learning
  rate, epoch cap and early stopping (both through ``flows.posterior.training``); zuko gets
  per-dimension standardised data. Held-out NLL per sample in the original space beside the
  exact entropy; targets a 22-D correlated Gaussian and Haario's 8-D twisted Gaussian.
- ``dynesty``: a 4-D correlated Gaussian likelihood with a Gaussian prior (closed-form ln Z);
  ours from emcee chains vs dynesty (static, 500 live points, dlogz 0.1).
- ``harmonic``: on the same chains (correlated Gaussians in 2, 8 and 16 dimensions, eight
  AR(1) chains each, independent chains per seed) ours with its defaults vs harmonic's
  recommended recipe (standardised samples, RQ spline, T = 0.8); error, reported sigma,
  z-scores and CPU seconds, then one case with another process keeping a core busy
  (``loaded``), and harmonic without standardisation on the README's 3-D Gaussian with scales
  3000, 185 and 1e-5.
- ``calibration``: ours on independent AR(1) chains (tau = 9) in 2, 4, 8, 16 dimensions,
  ``--seeds`` each: z-score mean, rms and largest, mean |error| and mean sigma.
- ``readme``: the README's 3-D example over ``--seeds`` data seeds.
- ``threads``: one 8-D evidence run with 1 and 2 torch threads, alone and with a busy core.

Times are CPU seconds (``time.process_time``; for harmonic the subprocess's CPU time, JAX
start-up and compilation included) and wall seconds; on a shared machine wall time measures
the neighbours, CPU time the work. The load average at the start is printed.

References:
    C. Durkan et al., "Neural Spline Flows", arXiv:1906.04032; F. Rozet et al., zuko
    (github.com/probabilists/zuko); J. S. Speagle, "dynesty", arXiv:1904.02180; J. D. McEwen
    et al., arXiv:2111.12720; A. Polanska et al., arXiv:2405.05969 (harmonic with flows);
    H. Haario, E. Saksman, J. Tamminen, Comput. Stat. 14 (1999) (the twisted Gaussian).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/ holds scripts named like the packages (norms.py): keep the script folder off the
# import path so `import norms` finds the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from flows.posterior import evidence, fit_flow  # noqa: E402
from flows.posterior.training import train_by_likelihood  # noqa: E402


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
    """zuko.flows.NSF trained by the same loop as fit_flow, on standardised data."""
    import zuko

    torch.manual_seed(seed)
    mean, std = train.mean(0), train.std(0)
    t_train = torch.as_tensor((train - mean) / std, dtype=torch.float32)
    t_val = torch.as_tensor((val - mean) / std, dtype=torch.float32)
    flow = zuko.flows.NSF(train.shape[1], transforms=transforms, hidden_features=hidden, bins=bins)
    start = time.process_time()
    history = train_by_likelihood(
        flow, lambda y, c: -flow().log_prob(y), t_train, t_val, epochs=epochs,
        patience=patience, batch_size=batch_size, lr=lr, seed=seed,
    )
    return history.best_held_out + float(np.log(std).sum()), history.epochs, (
        time.process_time() - start
    )


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


def _ar1(eps: np.ndarray, phi: float) -> np.ndarray:
    """Stationary AR(1) along axis 1 driven by the innovations eps (nchains, n, d)."""
    x = np.empty_like(eps)
    x[:, 0] = eps[:, 0]
    for t in range(1, eps.shape[1]):
        x[:, t] = phi * x[:, t - 1] + math.sqrt(1 - phi**2) * eps[:, t]
    return x


def ar_chains(d: int, seed: int, nchains: int, n: int, phi: float = 0.8):
    """Stationary AR(1) chains of N(0, Sigma) (tau = (1 + phi) / (1 - phi)), Sigma fixed per d.

    Returns samples, ln posterior and the exact ln Z; every seed draws independent chains.
    """
    a = np.random.default_rng(d).normal(size=(d, d))
    cov = a @ a.T / d + 0.3 * np.eye(d)
    rng = np.random.default_rng(10_000 * d + seed)
    x = _ar1(rng.normal(size=(nchains, n, d)) @ np.linalg.cholesky(cov).T, phi)
    lp = -0.5 * np.einsum("...i,ij,...j->...", x, np.linalg.inv(cov), x)
    return x, lp, 0.5 * d * math.log(2 * math.pi) + 0.5 * np.linalg.slogdet(cov)[1]


def twisted_chains(d: int, seed: int, nchains: int, n: int, phi: float = 0.8, b: float = 0.03):
    """Haario's twisted Gaussian (x1 scaled by 10, x2 += b (x1^2 - 100)) as AR(1) chains: a
    curved, volume-preserving posterior whose ln Z is the Gaussian's, (d/2) ln 2 pi + ln 10."""
    y = _ar1(np.random.default_rng(20_000 * d + seed).normal(size=(nchains, n, d)), phi)
    x = y.copy()
    x[..., 0] *= 10.0
    x[..., 1] += b * (x[..., 0] ** 2 - 100.0)
    lp = -0.5 * (y**2).sum(-1)
    return x, lp, 0.5 * d * math.log(2 * math.pi) + math.log(10.0)


def readme_chains(seed: int):
    """The README example: a 3-D Gaussian with scales 3000, 185 and 1e-5 (4 x 2000 samples)."""
    scales = np.array([3000.0, 185.0, 1e-5])
    x = np.random.default_rng(seed).normal(size=(4, 2000, 3)) * scales
    truth = 1.5 * math.log(2 * math.pi) + math.log(3000 * 185 * 1e-5)
    return x, -0.5 * ((x / scales) ** 2).sum(-1), truth


def ours(x, lp, seed: int, threads: int = 1) -> dict:
    """normkit's evidence with its defaults; CPU and wall seconds of this call."""
    torch.set_num_threads(threads)
    cpu, wall = time.process_time(), time.perf_counter()
    r = evidence(x, lp, seed=seed, progress=False)
    return dict(ln_z=r.ln_z, err=r.ln_z_err, reliable=r.reliable, T=r.temperature,
                cpu=time.process_time() - cpu, wall=time.perf_counter() - wall)


class BusyCore:
    """Another process spinning on one core for the duration of a ``with`` block."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def run_harmonic(args, x, lp, seed: int, standardize: bool = True) -> dict | None:
    """harmonic in its own venv on the same chains (benchmarks/harmonic_runner.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chains.npz"
        np.savez(path, samples=x, ln_posterior=lp)
        command = [args.harmonic_python, str(Path(__file__).with_name("harmonic_runner.py")),
                   str(path), "--seed", str(seed), "--epochs", str(args.harmonic_epochs)]
        command += [] if standardize else ["--no-standardize"]
        wall = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["?"])[-1]
            return dict(ln_z=math.nan, err=math.nan, cpu=math.nan, wall=math.nan, failed=tail)
        out = json.loads(done.stdout.strip().splitlines()[-1])
        return dict(ln_z=out["ln_z"], err=out["ln_z_err"], cpu=out["cpu_s"],
                    wall=time.perf_counter() - wall)


def summary(rows: list[dict], truth_key: str = "truth") -> str:
    err = np.array([r["ln_z"] - r[truth_key] for r in rows])
    sigma = np.array([r["err"] for r in rows])
    z = err / sigma
    return (f"mean |err| {np.nanmean(np.abs(err)):.4f}  mean sigma {np.nanmean(sigma):.4f}  "
            f"z mean {np.nanmean(z):+.2f} rms {math.sqrt(np.nanmean(z**2)):.2f} "
            f"max |z| {np.nanmax(np.abs(z)):.2f}  CPU {np.nanmean([r['cpu'] for r in rows]):.1f} s"
            f"  wall {np.nanmean([r['wall'] for r in rows]):.1f} s  (n={len(rows)})")


def harmonic_benchmark(args) -> None:
    if not args.harmonic_python or not Path(args.harmonic_python).exists():
        print("harmonic: skipped (give --harmonic-python, a venv with `pip install harmonic`)")
        return
    for d in args.harmonic_dims:
        ours_rows, theirs_rows = [], []
        for seed in range(args.harmonic_seeds):
            x, lp, truth = ar_chains(d, seed, nchains=8, n=args.harmonic_samples, phi=0.5)
            ours_rows.append(dict(ours(x, lp, seed), truth=truth))
            theirs_rows.append(dict(run_harmonic(args, x, lp, seed), truth=truth))
            o, h = ours_rows[-1], theirs_rows[-1]
            print(f"  {d:2d}-D seed {seed}: truth {truth:.4f} | ours {o['ln_z']:.4f} +- "
                  f"{o['err']:.4f} ({o['cpu']:.1f} s CPU) | harmonic {h['ln_z']:.4f} +- "
                  f"{h['err']:.4f} ({h['cpu']:.1f} s CPU) {h.get('failed', '')}", flush=True)
        ratio = np.nanmean([o["cpu"] for o in ours_rows]) / np.nanmean(
            [h["cpu"] for h in theirs_rows])
        print(f"{d:2d}-D ours     {summary(ours_rows)}")
        print(f"{d:2d}-D harmonic {summary(theirs_rows)}")
        print(f"{d:2d}-D CPU ratio ours / harmonic: {ratio:.2f}", flush=True)
    x, lp, truth = ar_chains(8, 100, nchains=8, n=args.harmonic_samples, phi=0.5)
    with BusyCore():
        o, h = ours(x, lp, 100), run_harmonic(args, x, lp, 100)
    print(f" 8-D loaded (a core kept busy): ours {o['ln_z'] - truth:+.4f} +- {o['err']:.4f} "
          f"{o['cpu']:.1f} s CPU {o['wall']:.1f} s wall | harmonic {h['ln_z'] - truth:+.4f} +- "
          f"{h['err']:.4f} {h['cpu']:.1f} s CPU {h['wall']:.1f} s wall | CPU ratio "
          f"{o['cpu'] / h['cpu']:.2f}", flush=True)
    (x, lp, truth), (x1, lp1, _) = readme_chains(0), readme_chains(1)
    x, lp = np.concatenate([x, x1]), np.concatenate([lp, lp1])
    o = ours(x, lp, 0)
    print(f"README 3-D (scales 3000, 185, 1e-5), exact {truth:.4f}: ours {o['ln_z']:.4f} +- "
          f"{o['err']:.4f}", flush=True)
    for standardize in (False, True)[: 1 if args.quick else 2]:
        h = run_harmonic(args, x, lp, 0, standardize)
        print(f"README 3-D, harmonic standardize={standardize}: {h['ln_z']:.4f} +- "
              f"{h['err']:.4f} {h.get('failed', '')}", flush=True)


def calibration_benchmark(args) -> None:
    for d in args.calibration_dims:
        rows = []
        for seed in range(args.seeds):
            x, lp, truth = ar_chains(d, seed, nchains=4, n=3000)
            rows.append(dict(ours(x, lp, seed), truth=truth))
        print(f"{d:2d}-D Gaussian, 4 AR(1) chains x 3000 (tau 9): {summary(rows)}", flush=True)
    for d in args.twisted_dims:
        rows = []
        for seed in range(args.seeds):
            x, lp, truth = twisted_chains(d, seed, nchains=4, n=3000)
            rows.append(dict(ours(x, lp, seed), truth=truth))
        print(f"{d:2d}-D twisted Gaussian (the flow must learn it), same chains: "
              f"{summary(rows)}", flush=True)


def readme_benchmark(args) -> None:
    rows = []
    for seed in range(args.seeds):
        x, lp, truth = readme_chains(seed)
        rows.append(dict(ours(x, lp, seed), truth=truth))
        if seed == 0:
            print(f"seed 0 (the README's chains): {rows[0]['ln_z']:.4f} +- {rows[0]['err']:.4f}"
                  f" vs exact {truth:.4f}")
    print(f"README 3-D over {len(rows)} seeds: {summary(rows)}", flush=True)


def threads_benchmark(args) -> None:
    x, lp, truth = ar_chains(8, 7, nchains=4, n=3000)
    for loaded in (False, True):
        for threads in (1, 2):
            if loaded:
                with BusyCore():
                    r = ours(x, lp, 0, threads)
            else:
                r = ours(x, lp, 0, threads)
            print(f"8-D evidence, {threads} thread(s), {'a core busy' if loaded else 'alone'}: "
                  f"{r['cpu']:.1f} s CPU, {r['wall']:.1f} s wall, ln Z err "
                  f"{r['ln_z'] - truth:+.4f}", flush=True)


SECTIONS = ("density", "dynesty", "harmonic", "calibration", "readme", "threads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", default="harmonic,calibration,readme,threads",
                        help=f"comma-separated: {', '.join(SECTIONS)} or all")
    parser.add_argument("--quick", action="store_true", help="smaller data, fewer seeds")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds for calibration/readme (default 20, quick 5)")
    parser.add_argument("--calibration-dims", default="2,4,8,16",
                        help="dimensions of the Gaussian calibration cases")
    parser.add_argument("--twisted-dims", default="4,8",
                        help="dimensions of the twisted-Gaussian calibration cases ('' for none)")
    parser.add_argument("--harmonic-seeds", type=int, default=4)
    parser.add_argument("--harmonic-dims", default="2,8,16", help="dimensions of the cases")
    parser.add_argument("--harmonic-samples", type=int, default=2000, help="per chain (8)")
    parser.add_argument("--harmonic-epochs", type=int, default=20, help="harmonic's flow fit")
    parser.add_argument("--harmonic-python", default=os.environ.get("HARMONIC_PYTHON"),
                        help="python of a venv with harmonic installed")
    args = parser.parse_args()
    sections = SECTIONS if args.sections == "all" else args.sections.split(",")
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    args.n = 10_000 if args.quick else 50_000
    args.epochs = 30 if args.quick else 100
    args.patience = 5
    args.steps = 2000 if args.quick else 4000
    args.seeds = args.seeds or (5 if args.quick else 20)
    for name in ("harmonic_dims", "calibration_dims", "twisted_dims"):
        text = getattr(args, name)
        try:
            setattr(args, name, [int(d) for d in text.split(",") if d])
        except ValueError:
            parser.error(f"--{name.replace('_', '-')} takes integers like 2,4,8; got {text!r}")
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; CPU seconds, "
          "1 torch thread unless said", flush=True)
    if "density" in sections:
        print("\n== density fit: held-out NLL per sample (nats), same split/loop ==")
        density_benchmark(args)
    if "dynesty" in sections:
        print("\n== evidence: 4-D Gaussian likelihood x Gaussian prior, closed-form ln Z ==")
        summarise_evidence(evidence_benchmark(args))
    if "harmonic" in sections:
        print(f"\n== normkit vs harmonic on the same chains (8 AR(1) chains x "
              f"{args.harmonic_samples}, tau 3; harmonic {args.harmonic_epochs} epochs) ==")
        harmonic_benchmark(args)
    if "calibration" in sections:
        print(f"\n== error calibration over {args.seeds} independent chain sets ==")
        calibration_benchmark(args)
    if "readme" in sections:
        print("\n== the README example over seeds ==")
        readme_benchmark(args)
    if "threads" in sections:
        print("\n== torch threads, alone and with a busy core ==")
        threads_benchmark(args)


if __name__ == "__main__":
    main()
