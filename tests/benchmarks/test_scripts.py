"""Every benchmark script answers ``--help`` when run the way the docs write it.

``python benchmarks/<name>.py --help`` from the repository root, without PYTHONPATH: the
script's folder comes first on ``sys.path`` there, so a script named like one of our packages
(the old ``benchmarks/norms.py``) would shadow it and crash. One fresh process runs every
script in turn that way (``runpy``, ``sys.path[0]`` the script's folder, ``sys.argv[0]`` its
path), so torch is imported once instead of once per script.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")
                 if 'if __name__ == "__main__":' in p.read_text())
# run by benchmarks/posterior.py with the python of harmonic's own environment, not by hand
INTERNAL = {"harmonic_runner.py"}


@functools.cache
def _environment() -> dict[str, str]:
    """The environment of a user after ``pip install -e .``: no PYTHONPATH. Where the installed
    normkit is another checkout (a git worktree), PYTHONPATH names this one instead; the
    script's own folder still comes first on sys.path, which is what could shadow a package."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = "import importlib.util as u; print(u.find_spec('norms').origin)"
    found = subprocess.run([sys.executable, "-c", probe], cwd=ROOT / "benchmarks", env=env,
                           capture_output=True, text=True, timeout=60).stdout.strip()
    if not found.startswith(str(ROOT)):
        env["PYTHONPATH"] = str(ROOT)
    return env


def test_every_script_is_documented() -> None:
    documented = set(re.findall(r"python benchmarks/(\w+\.py)",
                                (ROOT / "docs" / "benchmarks.md").read_text()))
    assert len(SCRIPTS) >= 10
    assert set(SCRIPTS) - INTERNAL <= documented


def test_no_script_shadows_a_package() -> None:
    ours = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert ours >= {"norms", "flows", "core"}
    assert not {Path(name).stem for name in SCRIPTS} & ours


# run by a fresh python from the repository root: each script as `python benchmarks/<name>.py
# --help` runs it, its exit code, stdout and stderr as one JSON line per script
_HELP_ALL = """
import contextlib, io, json, os, runpy, sys, traceback
root, base = os.getcwd(), sys.path[1:]
for script in sys.argv[1:]:
    # as a fresh `python benchmarks/<script>`: its folder first, no path or module of this
    # checkout left by the scripts before it (third-party modules such as torch stay loaded,
    # also from a virtual environment inside the checkout: numpy cannot load twice)
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None) or ""
        if file.startswith(root + os.sep) and not file.startswith(sys.prefix + os.sep):
            del sys.modules[name]
    path = os.path.join("benchmarks", script)
    sys.argv, sys.path[:] = [path, "--help"], [os.path.join(root, "benchmarks"), *base]
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (stop.code is not None)
        except BaseException:
            traceback.print_exc()
            code = 1
    print(json.dumps({"script": script, "code": code, "out": out.getvalue(),
                      "err": err.getvalue()}), flush=True)
"""


@functools.cache
def _help_of_every_script() -> dict[str, dict]:
    done = subprocess.run([sys.executable, "-c", _HELP_ALL, *SCRIPTS], cwd=ROOT,
                          env=_environment(), capture_output=True, text=True, timeout=600)
    runs = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {run["script"]: run for run in runs} | {"": {"err": done.stderr}}


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_runs_as_documented(script: str) -> None:
    assert importlib.util.find_spec("norms") is not None
    runs = _help_of_every_script()
    assert script in runs, runs[""]["err"][-2000:]  # the process died before this script
    done = runs[script]
    assert done["code"] == 0, done["err"][-2000:]
    assert done["out"].startswith("usage: ") and "--help" in done["out"]
    offered = set(re.findall(r"--[a-z][a-z0-9-]*", done["out"]))
    assert _documented_options(script) <= offered  # the docs use no option it lacks


def _documented_options(script: str) -> set[str]:
    """Options passed to ``script`` by the commands in README.md and docs/benchmarks.md."""
    text = "\n".join((ROOT / page).read_text() for page in ("README.md", "docs/benchmarks.md"))
    text = re.sub(r"\\\n\s*", " ", text)  # join continued lines
    options = set()
    for line in text.splitlines():
        for rest in re.findall(rf"python benchmarks/{re.escape(script)}([^`#\n]*)", line):
            options |= set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest))
    return options


@pytest.mark.parametrize("argv, message", [
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["--batches", "0"], "argument --batches: must be an integer >= 1, got '0'"),
    (["--device", "cuda"], "--device cuda asked for, but torch sees no CUDA device"),
])
def test_jacobi_benchmark_bad_options_are_one_line_exit_2(argv, message, capsys, monkeypatch):
    import torch

    from benchmarks import jacobi

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert jacobi.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
