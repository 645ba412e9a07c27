"""Chain readers: each format read back from a small file written by its own library, the
format detected from the file, pickles refused unopened, weights used correctly."""

from __future__ import annotations

import json
import math
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from flows.posterior import evidence
from flows.posterior.estimator import harmonic_mean_from_blocks
from flows.posterior.readers import detect_format, load_chains


def _gauss(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape)


def test_arviz_netcdf_and_zarr(tmp_path: Path) -> None:
    az = pytest.importorskip("arviz", reason="arviz is in normkit[chains]")
    mu, v = _gauss((3, 40)), _gauss((3, 40, 2), 1)
    log_like, log_prior = _gauss((3, 40, 5), 2), _gauss((3, 40), 3)
    idata = az.from_dict(
        posterior={"mu": mu, "v": v},
        log_likelihood={"y": log_like},
        sample_stats={"lp": np.zeros((3, 40))},
    )
    idata.add_groups(log_prior={"mu": log_prior})
    idata.to_netcdf(tmp_path / "run.nc")
    chains = load_chains(tmp_path / "run.nc")
    assert detect_format(tmp_path / "run.nc") == "arviz" and chains.format == "arviz"
    assert chains.names == ["mu", "v[0]", "v[1]"] and chains.samples.shape == (3, 40, 3)
    assert np.allclose(chains.samples[..., 0], mu)
    assert np.allclose(chains.samples[..., 2], v[..., 1])
    assert np.allclose(chains.ln_posterior, log_like.sum(-1) + log_prior)
    assert np.allclose(load_chains(tmp_path / "run.nc", column="lp").ln_posterior, 0.0)
    pytest.importorskip("zarr", reason="zarr is in normkit[chains]")
    lp_only = az.from_dict(posterior={"mu": mu}, sample_stats={"lp": log_prior})
    lp_only.to_datatree().to_zarr(tmp_path / "run.zarr")  # ArviZ 0.x + zarr 3: via the DataTree
    chains = load_chains(tmp_path / "run.zarr")
    assert detect_format(tmp_path / "run.zarr") == "arviz"
    assert np.allclose(chains.ln_posterior, log_prior) and chains.samples.shape == (3, 40, 1)


@pytest.mark.parametrize("extension", ["json", "hdf5"])
def test_bilby_result_json_and_hdf5(tmp_path: Path, extension: str) -> None:
    bilby = pytest.importorskip("bilby", reason="bilby writes the test file")
    import pandas as pd

    x = _gauss((300, 2))
    posterior = pd.DataFrame({
        "a": x[:, 0], "b": x[:, 1], "fixed": np.ones(300),
        "log_likelihood": -0.5 * (x**2).sum(1), "log_prior": np.full(300, -math.log(100.0)),
    })
    priors = bilby.core.prior.PriorDict(
        {k: bilby.core.prior.Uniform(-5, 5, k) for k in ("a", "b")}
    )
    result = bilby.core.result.Result(
        label="run", outdir=str(tmp_path), search_parameter_keys=["a", "b"],
        posterior=posterior, priors=priors,
    )
    path = tmp_path / f"run.{extension}"
    result.save_to_file(filename=str(path), extension=extension, overwrite=True)
    chains = load_chains(path)
    assert detect_format(path) == "bilby" and chains.names == ["a", "b"]
    assert np.allclose(chains.samples[0], x)
    assert np.allclose(chains.ln_posterior[0], -0.5 * (x**2).sum(1) - math.log(100.0))


def test_emcee_hdf5_backend_with_burn_in(tmp_path: Path) -> None:
    pytest.importorskip("h5py", reason="h5py is in normkit[chains]")
    import emcee

    backend = emcee.backends.HDFBackend(str(tmp_path / "run.h5"))
    backend.reset(8, 2)
    np.random.seed(0)
    sampler = emcee.EnsembleSampler(8, 2, lambda t: -0.5 * (t**2).sum(), backend=backend)
    sampler.run_mcmc(_gauss((8, 2)), 40, progress=False)
    chains = load_chains(tmp_path / "run.h5")
    assert detect_format(tmp_path / "run.h5") == "emcee"
    assert chains.samples.shape == (8, 30, 2)  # walkers as chains; the default 25% burn-in
    assert np.allclose(chains.samples, sampler.get_chain(discard=10).transpose(1, 0, 2))
    assert np.allclose(chains.ln_posterior, sampler.get_log_prob(discard=10).T)
    assert load_chains(tmp_path / "run.h5", burn_in=0.0).samples.shape == (8, 40, 2)


def test_ptmcmc_folder_with_pars_and_burn_in(tmp_path: Path) -> None:
    ptmcmc = pytest.importorskip("PTMCMCSampler.PTMCMCSampler", reason="PTMCMCSampler")
    np.random.seed(0)
    sampler = ptmcmc.PTSampler(
        2, lambda t: -0.5 * float(np.sum(t**2)), lambda t: 0.0, 0.5 * np.eye(2),
        outDir=str(tmp_path / "run"), verbose=False,
    )
    sampler.sample(np.zeros(2), 2000, SCAMweight=30, AMweight=15, DEweight=50)
    (tmp_path / "run" / "pars.txt").write_text("log10_A\ngamma\n")
    table = np.loadtxt(tmp_path / "run" / "chain_1.txt")
    chains = load_chains(tmp_path / "run")
    assert detect_format(tmp_path / "run") == "ptmcmc" and chains.names == ["log10_A", "gamma"]
    cut = int(round(0.25 * len(table)))
    assert np.allclose(chains.samples[0], table[cut:, :2])
    assert np.allclose(chains.ln_posterior[0], table[cut:, 2])  # lnpost, not lnlike
    assert load_chains(tmp_path / "run", burn_in=0.5).samples.shape[1] == len(table) - len(
        table
    ) // 2
    (tmp_path / "run" / "pars.txt").write_text("only_one\n")
    with pytest.raises(ValueError, match="names 1 parameters"):
        load_chains(tmp_path / "run")


def test_getdist_chains_with_weights_and_derived(tmp_path: Path) -> None:
    getdist = pytest.importorskip("getdist", reason="getdist writes the test file")
    x = _gauss((500, 2))
    weights = np.random.default_rng(1).integers(1, 4, 500).astype(float)
    derived = x.sum(1, keepdims=True)
    samples = getdist.MCSamples(
        samples=np.hstack([x, derived]), weights=weights, loglikes=0.5 * (x**2).sum(1),
        names=["a", "b", "s*"], labels=["a", "b", "s"],
    )
    samples.saveAsText(str(tmp_path / "run"))
    for path in (tmp_path / "run", tmp_path / "run.txt"):
        chains = load_chains(path)
        assert detect_format(path) == "getdist" and chains.names == ["a", "b"]
        assert np.allclose(chains.samples[0], x) and np.allclose(chains.weights[0], weights)
        assert np.allclose(chains.ln_posterior[0], -0.5 * (x**2).sum(1))


def test_cobaya_header_and_updated_yaml(tmp_path: Path) -> None:
    x = _gauss((200, 2))
    table = np.column_stack([np.ones(200), 0.5 * (x**2).sum(1), x, x.sum(1), np.zeros(200)])
    header = "weight minuslogpost a b derived_s minuslogprior"
    for i in (1, 2):
        np.savetxt(tmp_path / f"run.{i}.txt", table, header=header)
    (tmp_path / "run.updated.yaml").write_text(
        "params:\n  a: {prior: {min: -5, max: 5}}\n  b: {prior: {min: -5, max: 5}}\n"
        "  derived_s: {derived: true}\n"
    )
    chains = load_chains(tmp_path / "run")
    assert chains.names == ["a", "b"] and chains.samples.shape == (1, 400, 2)
    (tmp_path / "run.updated.yaml").unlink()
    assert load_chains(tmp_path / "run.1.txt").names == ["a", "b", "derived_s"]


@pytest.mark.parametrize("suffix", [".pkl", ".save", ".dat"])
def test_pickles_are_refused_unopened(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / f"dynesty{suffix}"
    path.write_bytes(pickle.dumps({"samples": [1.0]}) if suffix != ".pkl" else b"anything")
    with pytest.raises(ValueError, match="is a pickle; normkit never unpickles.*samples_equal"):
        load_chains(path)
    assert not marker.exists()


def test_missing_extra_names_the_pip_command(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "x.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    monkeypatch.setitem(sys.modules, "h5py", None)  # as if h5py were not installed
    with pytest.raises(ValueError, match=r"needs the Python package 'h5py'.*normkit\[chains\]"):
        load_chains(tmp_path / "x.h5")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        load_chains(tmp_path / "x.h5")


def test_weighted_harmonic_mean_equals_the_expanded_chain() -> None:
    """Integer weights are multiplicities: the estimate equals the repeated-rows estimate."""
    rng = np.random.default_rng(0)
    terms = [rng.normal(size=50) for _ in range(6)]
    counts = [rng.integers(1, 4, size=50) for _ in range(6)]
    weighted = harmonic_mean_from_blocks(terms, counts)
    expanded = harmonic_mean_from_blocks([np.repeat(t, c) for t, c in zip(terms, counts)])
    assert weighted == pytest.approx(expanded, rel=1e-12)
    # zero-weight blocks are ignored, like missing ones
    assert harmonic_mean_from_blocks([*terms, terms[0]], [*counts, np.zeros(50)]) == (
        pytest.approx(weighted, rel=1e-12)
    )


def test_importance_weighted_samples_give_calibrated_evidence() -> None:
    """Samples from a wider Gaussian q with weights p~/q: right answer, honest error; ignoring
    the weights is many sigma off."""
    truth = math.log(2 * math.pi)
    z, ignored = [], []
    for seed in range(12):
        x = np.random.default_rng(seed).normal(size=(4, 1500, 2)) * 1.4
        lp = -0.5 * (x**2).sum(-1)
        w = np.exp(lp + 0.5 * (x**2).sum(-1) / 1.4**2)
        result = evidence(x, lp, weights=w, seed=seed, progress=False, fit_options={"epochs": 0})
        z.append((result.ln_z - truth) / result.ln_z_err)
        plain = evidence(x, lp, seed=seed, progress=False, fit_options={"epochs": 0})
        ignored.append((plain.ln_z - truth) / plain.ln_z_err)
        assert result.diagnostics["weighted"] and result.reliable
        json.dumps(result.as_dict())
    assert abs(np.mean(z)) < 0.8 and 0.5 < np.std(z) < 1.6
    assert abs(np.mean(ignored)) > 5
