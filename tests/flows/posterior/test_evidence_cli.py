"""The evidence CLI: table with warning markers, JSON schema, reliability exit status, input
formats, corner plot, option validation at parse time, errors exit 2."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import emcee
import numpy as np
import pytest

from flows.evidence import main
from flows.posterior.cli import EXIT_UNRELIABLE
from flows.posterior.readers import load_chains

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
    assert set(report) == {"complete", "settings", "results", "bayes_factors"}
    assert report["complete"] is True and report["settings"]["temperature"] == 0.8
    first = report["results"][0]
    assert {"file", "ln_z", "ln_z_err", "estimator", "temperature", "warnings"} <= set(first)
    assert first["file"] == str(a) and first["temperature"] == 0.8
    assert abs(first["ln_z"] - za) < 5 * first["ln_z_err"] + 0.01
    (factor,) = report["bayes_factors"]
    assert set(factor) == {"a", "b", "ln_b", "ln_b_err", "reliable"}
    assert first["reliable"] is True and first["unreliable_because"] == []
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
        (lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 40), "is not a readable .npz archive"),
        (lambda p: p.mkdir(), "is a folder"),
        (lambda p: p.write_bytes(b"\x80\x04\x95" + b"\0" * 20), "is a pickle; normkit never"),
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


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--epochs", "-1"], "argument --epochs: -1 must be an integer in [0, inf]"),
        (["--epochs", "2.5"], "argument --epochs: '2.5' is not an integer"),
        (["--temperature", "2"], "argument --temperature: 2 must be a number in (0, 1]"),
        (["--temperature", "nan"], "argument --temperature: nan must be a number in (0, 1]"),
        (["--threads", "0"], "argument --threads: must be an integer >= 1, got '0'"),
        (["--burn-in", "1"], "argument --burn-in: 1 must be a number in [0, 1)"),
        (["--seed", "-3"], "argument --seed: must be an integer in 0..2**63-1"),
        (["--format", "pickle"], "argument --format: invalid choice: 'pickle'"),
    ],
)
def test_numeric_options_checked_at_parse_time(
    tmp_path: Path, capsys: pytest.CaptureFixture, option: list[str], message: str
) -> None:
    assert main([str(tmp_path / "never-read.npz"), *option]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and "\n" not in err


def test_outputs_checked_before_computing_and_written_atomically(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _gaussian_file(tmp_path / "a.npz", 1.0, 0)
    folder = tmp_path / "folder"
    folder.mkdir()
    cases = [
        (["--out", str(folder)], "is a folder"),
        (["--out", str(tmp_path / "missing" / "r.json")], "does not exist"),
        (["--plot", str(tmp_path / "corner.pdf")], "must end in .png"),
    ]
    for option, message in cases:
        assert main([str(tmp_path / "a.npz"), *option, *FAST]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --") and message in err and "\n" not in err
    out = tmp_path / "report.json"
    out.write_text("stale")
    assert main([str(tmp_path / "a.npz"), "--json", "--out", str(out), *FAST]) == 0
    assert json.loads(out.read_text()) == json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "folder", "report.json"]


def test_each_file_is_saved_when_done_and_resume_reuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    module = importlib.import_module("flows.posterior.evidence")
    a, b, out = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "report.json"
    _gaussian_file(a, 1.0, 0)
    _gaussian_file(b, 3.0, 1)
    real, calls = module.evidence, []

    def killed_on_the_second_file(*args, **kwargs):
        calls.append(kwargs["seed"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill would stop it: nothing of b is written
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "evidence", killed_on_the_second_file)
    with pytest.raises(KeyboardInterrupt):
        main([str(a), str(b), "--out", str(out), *FAST])
    partial = json.loads(out.read_text())
    assert partial["complete"] is False and partial["bayes_factors"] == []
    assert [row["file"] for row in partial["results"]] == [str(a)]

    calls.clear()
    monkeypatch.setattr(module, "evidence", lambda *args, **kwargs: (calls.append(1),
                                                                     real(*args, **kwargs))[1])
    assert main([str(a), str(b), "--out", str(out), "--resume", "--json", *FAST]) == 0
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report and len(calls) == 1  # only b computed
    assert report["complete"] is True and report["results"][0] == partial["results"][0]
    (factor,) = report["bayes_factors"]
    assert factor["ln_b"] == pytest.approx(report["results"][0]["ln_z"]
                                           - report["results"][1]["ln_z"])
    calls.clear()  # other settings: nothing is reused
    assert main([str(a), str(b), "--out", str(out), "--resume", "--seed", "1", *FAST]) == 0
    assert len(calls) == 2
    capsys.readouterr()
    assert main([str(a), "--resume", *FAST]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --resume needs --out (the report of the run to continue)")


def _unconverged_chains(path: Path) -> float:
    """The issue's case: 16 emcee walkers x 32 steps started 3 sigma off the mode (4-D)."""
    rng = np.random.default_rng(0)
    d = 4
    a = rng.normal(size=(d, d))
    cov = a @ a.T / d + 0.2 * np.eye(d)
    precision = np.linalg.inv(cov)
    std = np.sqrt(np.diag(cov))

    def ln_post(t: np.ndarray) -> np.ndarray:
        return -0.5 * np.einsum("...i,ij,...j->...", t, precision, t)

    np.random.seed(1)
    sampler = emcee.EnsembleSampler(16, d, ln_post, vectorize=True)
    sampler.run_mcmc(3 * std + 0.01 * std * rng.normal(size=(16, d)), 32)
    x = sampler.get_chain().transpose(1, 0, 2)
    np.savez(path, samples=x, ln_posterior=sampler.get_log_prob().T)
    return 0.5 * d * math.log(2 * math.pi) + 0.5 * np.linalg.slogdet(cov)[1]


def test_unreliable_estimate_is_marked_and_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad, good = tmp_path / "unconverged.npz", tmp_path / "good.npz"
    _unconverged_chains(bad)
    _gaussian_file(good, 1.0, 0)
    assert main([str(bad), "--json", *FAST]) == EXIT_UNRELIABLE
    captured = capsys.readouterr()
    (result,) = json.loads(captured.out)["results"]
    assert result["reliable"] is False and result["unreliable_because"]
    assert set(result["unreliable_because"]) <= set(result["warnings"])
    statistical = result["diagnostics"]["ln_z_err_statistical"]
    assert result["ln_z_err"] >= max(statistical, result["diagnostics"]["log_term_range"])
    assert captured.err.startswith("error: unreliable estimate for")
    assert main([str(good), str(bad), *FAST, "--allow-unreliable"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith(str(bad)))
    markers = [tok for tok in row.split() if tok.startswith("[")]
    assert "UNRELIABLE" in row and len(markers) == len(result["warnings"])
    for marker in markers:  # every marker is spelled out below the table
        assert any(line.startswith(f"{marker} {bad}: ") for line in lines)
    good_row = next(line for line in lines if line.startswith(str(good)))
    assert "UNRELIABLE" not in good_row
    assert lines[-1 - len(markers) - 1].rstrip().endswith("UNRELIABLE")  # the Bayes factor


def test_cli_choices_are_the_library_names() -> None:
    from flows.posterior import cli, kinds, readers

    assert cli.FLOWS == tuple(kinds.FLOWS) and cli.FORMATS == ("auto", *readers.FORMATS)


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys, runpy; sys.argv = ['flows.posterior', '--help']\n"
        "try:\n    runpy.run_module('flows.posterior', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.stdout.strip().endswith("NO-TORCH") and "--allow-unreliable" in result.stdout
    assert "(default: 200)" in result.stdout.replace("\n", " ").replace("  ", " ")


@pytest.mark.parametrize("module", ["flows.posterior", "flows.evidence"])
def test_module_entry_point_exit_code(tmp_path: Path, module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, str(tmp_path / "missing.npz")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: chain file '{tmp_path / 'missing.npz'}' does not exist"
    ]
