"""The evidence CLI: table, JSON schema, input formats, corner plot, errors exit 2."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flows.evidence import main
from flows.posterior.io import load_chains

ROOT = Path(__file__).resolve().parents[3]
FAST = ["--epochs", "2"]


def _gaussian_file(path: Path, scale: float, seed: int) -> float:
    """Write a 2-D isotropic Gaussian posterior (4 chains); return its exact ln Z."""
    x = np.random.default_rng(seed).normal(size=(4, 800, 2)) * scale
    np.savez(path, samples=x, ln_posterior=-0.5 * (x**2).sum(-1) / scale**2)
    return math.log(2 * math.pi * scale**2)


def test_table_and_bayes_factor(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    za, zb = _gaussian_file(a, 1.0, 0), _gaussian_file(b, 3.0, 1)
    assert main([str(a), str(b), *FAST]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["file", "ln", "Z"]
    row_a = next(line for line in lines if line.startswith(str(a)))
    assert abs(float(row_a.split()[1]) - za) < 0.05
    factor = lines[-1]
    assert factor.split()[:2] == [str(a), str(b)]
    ln_b = float(factor.split()[2])
    assert abs(ln_b - (za - zb)) < 0.1
    assert float(factor.split()[4]) == pytest.approx(math.exp(ln_b), rel=1e-3)


def test_json_schema(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    za, zb = _gaussian_file(a, 1.0, 0), _gaussian_file(b, 0.5, 1)
    assert main([str(a), str(b), "--json", "--temperature", "0.8", *FAST]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"results", "bayes_factors"}
    first = report["results"][0]
    assert {"file", "ln_z", "ln_z_err", "estimator", "temperature", "warnings"} <= set(first)
    assert first["file"] == str(a) and first["temperature"] == 0.8
    assert abs(first["ln_z"] - za) < 5 * first["ln_z_err"] + 0.01
    (factor,) = report["bayes_factors"]
    assert set(factor) == {"a", "b", "ln_b", "ln_b_err"}
    second = report["results"][1]
    assert abs(second["ln_z"] - zb) < 5 * second["ln_z_err"] + 0.01
    assert factor["ln_b"] == pytest.approx(first["ln_z"] - second["ln_z"])
    assert factor["ln_b_err"] == pytest.approx(math.hypot(first["ln_z_err"], second["ln_z_err"]))


def test_npy_pair_text_chains_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    x = np.random.default_rng(2).normal(size=(3000, 2))
    lp = -0.5 * (x**2).sum(-1)
    np.save(tmp_path / "run.npy", x)
    np.save(tmp_path / "run_ln_posterior.npy", lp)
    table = np.column_stack([x, lp, lp + 1.0])
    np.savetxt(tmp_path / "chain.txt", table, header="alpha beta lnpost lnlike", comments="# ")
    plot = tmp_path / "corner.png"
    files = [str(tmp_path / "run.npy"), str(tmp_path / "chain.txt")]
    assert main([*files, "--json", "--plot", str(plot), *FAST]) == 0
    report = json.loads(capsys.readouterr().out)
    for result in report["results"]:
        assert abs(result["ln_z"] - math.log(2 * math.pi)) < 5 * result["ln_z_err"] + 0.01
    pngs = sorted(tmp_path.glob("corner-*.png"))
    assert len(pngs) == 2 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    chains = load_chains(tmp_path / "chain.txt")
    assert chains.names == ["alpha", "beta"] and chains.samples.shape == (1, 3000, 2)


def test_text_chains_with_chain_column_and_integer_column(tmp_path: Path) -> None:
    rows = np.column_stack([np.repeat([0, 1], 50), np.arange(100.0), -np.arange(100.0)])
    np.savetxt(tmp_path / "c.txt", rows, header="chain x log_posterior")
    chains = load_chains(tmp_path / "c.txt")
    assert chains.samples.shape == (2, 50, 1) and chains.ln_posterior[1, 0] == -50.0
    np.savetxt(tmp_path / "ptmcmc.txt", np.column_stack([rows[:, 1:], rows[:, 1:]]))
    chains = load_chains(tmp_path / "ptmcmc.txt", column=-3)
    assert chains.samples.shape == (1, 100, 1) and chains.ln_posterior[0, 3] == -3.0
    with pytest.raises(ValueError, match="no header line"):
        load_chains(tmp_path / "ptmcmc.txt")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "does not exist"),
        (
            lambda p: np.savez(p, samples=np.zeros((2, 50, 2)), ln_posterior=np.zeros((2, 40))),
            "ln_posterior has shape (2, 40)",
        ),
        (lambda p: np.savez(p, samples=np.zeros((2, 50, 2))), "no ln-posterior array"),
        (
            lambda p: np.savez(
                p,
                samples=np.random.default_rng(0).normal(size=(2, 50, 2)),
                ln_posterior=np.where(np.arange(50) < 5, np.nan, 0.0) * np.ones((2, 1)),
            ),
            "10 NaN or infinite values",
        ),
        (
            lambda p: np.savez(
                p,
                samples=np.random.default_rng(0).normal(size=(2, 8, 2)),
                ln_posterior=np.zeros((2, 8)),
            ),
            "too few samples per chain: 8",
        ),
    ],
)
def test_bad_input_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, make, message: str
) -> None:
    path = tmp_path / "bad.npz"
    make(path)
    assert main([str(path), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err


def test_bad_temperature_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _gaussian_file(tmp_path / "a.npz", 1.0, 0)
    assert main([str(tmp_path / "a.npz"), "--temperature", "2"]) == 2
    assert capsys.readouterr().err.strip() == "error: --temperature 2.0 must lie in (0, 1]"


def test_module_entry_point_exit_code(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flows.evidence", str(tmp_path / "missing.npz")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: chain file '{tmp_path / 'missing.npz'}' does not exist"
    ]
