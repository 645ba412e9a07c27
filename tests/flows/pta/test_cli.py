"""The flows.pta command line: conventions (help, defaults, one error line, one JSON line,
validated choices), results written as each model finishes, kill -9 and --resume, and
warnings / unreliable estimates shown beside their numbers. The models' computation is replaced
by tests/flows/pta/fakes.py, so these run in seconds; the real pipeline is tested in
test_evidence.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import flows.pta.compare as compare_module
from flows.pta.__main__ import FLOW_KINDS, build_parser, main

from . import fakes

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def fake_models(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the computation; return the list of models computed, in order."""
    computed: list[str] = []

    def run(model, data, **options):  # noqa: ANN001, ANN202
        computed.append(model.name)
        return fakes.fake_run_model(model, data, **options)

    monkeypatch.setattr(compare_module, "run_model", run)
    monkeypatch.setattr(fakes, "FLAGS", {})
    return computed


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_loads_neither_torch_nor_numpy_and_shows_defaults() -> None:
    probe = (
        "import json, sys; from flows.pta.__main__ import build_parser; p = build_parser(); "
        "sub = p._subparsers._group_actions[0].choices; "
        "texts = [p.format_help()] + [s.format_help() for s in sub.values()]; "
        "print(json.dumps({'texts': texts, 'heavy': sorted(m for m in ('torch', 'numpy') "
        "if m in sys.modules)}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    report = json.loads(done.stdout)
    assert report["heavy"] == []
    assert not any("``" in text for text in report["texts"])
    compare_help = report["texts"][2]  # main, models, compare
    for default in ("(default: results)", "(default: ng15-hd)", "(default: spline)",
                    "(default: 14)", "(default: 2)"):
        assert default in " ".join(compare_help.split()), default
    assert "Exit status" in compare_help  # compare has a description


def test_flow_choices_are_the_posterior_flow_kinds() -> None:
    from flows.posterior.kinds import FLOWS

    assert tuple(FLOW_KINDS) == tuple(FLOWS)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--flow", "glow"], "invalid choice: 'glow'"),
        (["--nfreqs", "40"], "must be an integer 1..30"),
        (["--steps", "3"], "must be an integer >= 50"),
        (["--ensembles", "0"], "must be an integer >= 1"),
        (["--seed", "-1"], "must be an integer in 0..2**63-1"),
        (["--epochs", "nan"], "must be an integer"),
        (["--threads", "0"], "must be an integer >= 1"),
        (["--models", "powerlw"], "'powerlw' is unknown"),
        (["--models", "cosmic_strings"], "was renamed: use cosmic_strings_n"),
        (["--reference", "nope"], "'nope' is unknown"),
        (["--data", "/nonexistent/ceffyl"], "does not exist"),
        (["--resume", "--overwrite"], "not allowed with argument"),
    ],
)
def test_bad_input_is_one_error_line_before_any_computing(
    extra: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture,
    fake_models: list[str],
) -> None:
    argv = ["compare", "--models", "powerlaw", "--out", str(tmp_path / "out"), *extra]
    if "--models" in extra:
        argv = argv[:1] + argv[3:]
    code, out, err = _cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0]
    assert fake_models == [] and out == ""


def test_out_that_is_a_file_is_refused_before_computing(
    tmp_path: Path, capsys: pytest.CaptureFixture, fake_models: list[str]
) -> None:
    target = tmp_path / "results.json"
    target.write_text("{}")
    code, _, err = _cli(capsys, "compare", "--models", "powerlaw", "--out", str(target))
    assert code == 2 and "is a file; give a folder" in err and fake_models == []
    assert target.read_text() == "{}"


def test_stale_comparison_is_refused_unless_resumed_or_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture, fake_models: list[str]
) -> None:
    out = tmp_path / "out"
    base = ["compare", "--models", "powerlaw", "--out", str(out), "--no-plots"]
    assert _cli(capsys, *base)[0] == 0
    first = json.loads((out / "comparison.json").read_text())
    assert first["complete"] is True and [m["name"] for m in first["models"]] == [
        "smbhb", "powerlaw"]
    code, _, err = _cli(capsys, *base)
    assert code == 2 and "already holds a comparison" in err and "--resume" in err
    assert json.loads((out / "comparison.json").read_text()) == first  # untouched
    assert _cli(capsys, *base[:2], "smbhb_fixed", *base[3:], "--overwrite")[0] == 0
    again = json.loads((out / "comparison.json").read_text())
    assert [m["name"] for m in again["models"]] == ["smbhb", "smbhb_fixed"]
    assert not (out / "models" / "powerlaw.json").exists()  # the old run's records are gone


def test_kill_9_after_the_first_model_keeps_it_and_resume_finishes(
    tmp_path: Path, capsys: pytest.CaptureFixture, fake_models: list[str]
) -> None:
    out = tmp_path / "out"
    script = (
        "import sys, time\n"
        "import flows.pta.compare as c\n"
        "from tests.flows.pta.fakes import fake_run_model\n"
        "def run(model, data, **kw):\n"
        "    if model.name != 'smbhb':\n"
        "        time.sleep(600)\n"
        "    return fake_run_model(model, data, **kw)\n"
        "c.run_model = run\n"
        "from flows.pta.__main__ import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["compare", "--models", "smbhb,powerlaw", "--out", str(out), "--no-plots"]
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *argv], cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "models" / "smbhb.json").exists():
            assert proc.poll() is None, "the run ended before its first model"
            assert time.monotonic() < deadline, "the first model never finished"
            time.sleep(0.05)
        # the summary is rewritten right after the record: wait for it, then kill -9
        while not json.loads((out / "comparison.json").read_text())["models"]:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["complete"] is False and summary["pending"] == ["powerlaw"]
    assert [m["name"] for m in summary["models"]] == ["smbhb"]
    assert not list(out.rglob("*.tmp*"))
    # a fresh run refuses the folder; --resume reuses smbhb and computes only powerlaw
    assert _cli(capsys, *argv)[0] == 2
    code, stdout, _ = _cli(capsys, *argv, "--resume")
    assert code == 0 and fake_models == ["powerlaw"]
    assert "reused from the earlier run: smbhb" in stdout
    final = json.loads((out / "comparison.json").read_text())
    assert final["complete"] is True and final["reused"] == ["smbhb"]
    assert [m["name"] for m in final["models"]] == ["smbhb", "powerlaw"]
    assert final["models"][0]["ln_z"] == summary["models"][0]["ln_z"]


def test_resume_reuses_only_models_with_the_same_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture, fake_models: list[str]
) -> None:
    out = str(tmp_path / "out")
    base = ["compare", "--models", "powerlaw", "--out", out, "--no-plots"]
    assert _cli(capsys, *base)[0] == 0
    assert fake_models == ["smbhb", "powerlaw"]
    assert _cli(capsys, *base, "--resume")[0] == 0
    assert fake_models == ["smbhb", "powerlaw"]  # nothing recomputed
    assert _cli(capsys, *base, "--resume", "--seed", "1")[0] == 0
    assert fake_models[2:] == ["smbhb", "powerlaw"]  # another seed: both recomputed
    assert _cli(capsys, *base, "--resume", "--seed", "1", "--nfreqs", "10")[0] == 0
    assert fake_models[4:] == ["smbhb", "powerlaw"]  # other data: recomputed


def test_warnings_sit_beside_their_numbers_and_unreliable_is_not_a_number(
    tmp_path: Path, capsys: pytest.CaptureFixture, fake_models: list[str]
) -> None:
    fakes.FLAGS.update({
        "powerlaw": (["production run is short: 50 steps vs tau = 4 (want >= 20 tau)"], True),
        "domain_walls+smbhb": (["the log terms spread hugely (std 18.9): ln Z is unreliable"],
                               False),
    })
    argv = ["compare", "--models", "powerlaw,domain_walls+smbhb", "--out", str(tmp_path / "o"),
            "--no-plots"]
    code, out, err = _cli(capsys, *argv)
    assert code == 3 and "unreliable ln Z for domain_walls+smbhb" in err
    rows = {line.split()[0]: line for line in out.splitlines() if line[:1].isalpha()}
    assert rows["powerlaw"].rstrip().endswith("[1]")
    assert "unreliable" not in rows["powerlaw"]
    assert rows["domain_walls+smbhb"].count("unreliable") == 2  # ln Z and ln B
    assert rows["domain_walls+smbhb"].rstrip().endswith("[2]")
    assert "[1] powerlaw: production run is short" in out
    assert "[2] domain_walls+smbhb: the log terms spread hugely" in out
    code, out, err = _cli(capsys, *argv, "--overwrite", "--json", "--allow-unreliable")
    assert code == 0 and len(out.strip().splitlines()) == 1
    report = json.loads(out)
    entries = {m["name"]: m for m in report["models"]}
    assert report["reliable"] is False and report["complete"] is True
    assert entries["domain_walls+smbhb"]["reliable"] is False
    assert entries["domain_walls+smbhb"]["ln_b_reliable"] is False
    assert entries["powerlaw"]["reliable"] is True
    assert entries["powerlaw"]["warnings"] == fakes.FLAGS["powerlaw"][0]


def test_models_lists_every_model(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = _cli(capsys, "models")
    assert code == 0
    assert "pt_sound+smbhb" in out and "log10_A_bhb" in out and "cosmic_strings_n" in out


def test_parser_subcommands_are_models_and_compare() -> None:
    sub = build_parser()._subparsers._group_actions[0].choices
    assert set(sub) == {"models", "compare"}


@pytest.mark.slow
def test_cli_end_to_end_real_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "res"
    code, stdout, _ = _cli(
        capsys, "compare", "--models", "smbhb_fixed,smbhb", "--json", "--out", str(out),
        "--steps", "600", "--allow-unreliable",
    )
    assert code == 0 and len(stdout.strip().splitlines()) == 1
    table = json.loads(stdout)
    assert table["reference"] == "smbhb" and table["complete"] is True
    rows = {m["name"]: m for m in table["models"]}
    assert set(rows) == {"smbhb_fixed", "smbhb"}
    assert rows["smbhb"]["ln_b"] == 0.0
    fixed = rows["smbhb_fixed"]
    assert fixed["ln_b"] == pytest.approx(fixed["ln_z"] - rows["smbhb"]["ln_z"])
    # the flow ln Z agrees with the grid integral of the same posterior
    assert abs(fixed["ln_z"] - fixed["ln_z_grid"]) < 3 * fixed["ln_z_err"] + 0.02
    for name in ("free_spectrum.png", "corner_smbhb.png", "corner_smbhb_fixed.png"):
        assert (out / name).stat().st_size > 1000


def test_every_compare_option_is_in_the_docs() -> None:
    compare = build_parser()._subparsers._group_actions[0].choices["compare"]
    options = {s for a in compare._actions for s in a.option_strings if s.startswith("--")}
    page = (REPO / "docs" / "pta.md").read_text()
    missing = sorted(o for o in options - {"--help"} if f"`{o}`" not in page)
    assert not missing, f"docs/pta.md does not describe {missing}"
