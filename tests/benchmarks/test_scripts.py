"""Every benchmark script answers ``--help`` when run the way the docs write it.

``python benchmarks/<name>.py --help`` from the repository root in a fresh process, without
PYTHONPATH: the script's folder comes first on ``sys.path`` there, so a script named like one of
our packages (the old ``benchmarks/norms.py``) would shadow it and crash.
"""

from __future__ import annotations

import functools
import importlib.util
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


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_runs_as_documented(script: str) -> None:
    assert importlib.util.find_spec("norms") is not None
    done = subprocess.run([sys.executable, f"benchmarks/{script}", "--help"], cwd=ROOT,
                          env=_environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: ") and "--help" in done.stdout
    offered = set(re.findall(r"--[a-z][a-z0-9-]*", done.stdout))
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
