"""Every command line follows core.cli's convention and its documentation is complete.

- ``--help`` of every CLI exits 0 with a usage line and imports neither torch nor diffusers
  (the models load only when a command runs; checked through ``sys.modules``, not a clock);
- every option a CLI's parser accepts is named in its documentation page, and every option
  that a command in README.md or docs/*.md passes to a CLI exists in that CLI's parser.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# command -> (module or script whose build_parser() is the CLI, the pages that document it)
CLIS = {
    "python sample.py": ("sample.py", ("docs/image-flows.md", "docs/video-flows.md",
                                       "docs/diffusion.md")),
    "python -m flows.video": ("flows.video.__main__", ("docs/video-flows.md",)),
    "python -m diffusion.sample": ("diffusion.sample", ("docs/diffusion.md",)),
    "python -m flows.posterior": ("flows.posterior.cli", ("docs/posterior.md",)),
    "python -m flows.evidence": ("flows.posterior.cli", ("docs/posterior.md",)),
    "python -m flows.pta": ("flows.pta.__main__", ("docs/pta.md",)),
    "python -m trainers.train": ("trainers.cli", ("docs/training.md",)),
}


def _module(name: str):
    if name.endswith(".py"):
        spec = importlib.util.spec_from_file_location("sample_cli", ROOT / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(name)


def _options(parser: argparse.ArgumentParser) -> set[str]:
    """Every long option of ``parser`` and of its subcommands."""
    found = set()
    for action in parser._actions:
        found |= {o for o in action.option_strings if o.startswith("--") and o != "--help"}
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _options(sub)
    return found


def _parser(command: str) -> argparse.ArgumentParser:
    return _module(CLIS[command][0]).build_parser()


@pytest.mark.parametrize("command", sorted(CLIS))
def test_help_exits_0_without_importing_torch(command: str) -> None:
    target = CLIS[command][0]
    run = (f"runpy.run_path({str(ROOT / target)!r}, run_name='__main__')"
           if target.endswith(".py") else
           f"runpy.run_module({command.split()[-1]!r}, run_name='__main__', alter_sys=True)")
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['cli', '--help']\n"
        "try:\n"
        f"    {run}\n"
        "except SystemExit as stop:\n"
        "    assert stop.code in (0, None), stop.code\n"
        "print('HEAVY', sorted(m for m in ('torch', 'diffusers', 'numpy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ")
    heavy = done.stdout.strip().splitlines()[-1]
    assert "torch" not in heavy and "diffusers" not in heavy, heavy


@pytest.mark.parametrize("command", sorted(CLIS))
def test_every_option_is_documented(command: str) -> None:
    pages = "\n".join((ROOT / page).read_text() for page in CLIS[command][1])
    named = set(re.findall(r"--[a-z][a-z0-9-]*", pages))
    missing = sorted(_options(_parser(command)) - named)
    assert not missing, f"{command}: options missing from {CLIS[command][1]}: {missing}"


def _commands(text: str) -> list[str]:
    """Command lines of the fenced code blocks of ``text``, continuation lines joined."""
    lines = []
    for language, block in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S):
        if language not in ("", "bash", "sh", "console"):
            continue
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [line.split("#")[0] for line in joined.splitlines()]
    return lines


def _documented_uses() -> list[tuple[str, str, str]]:
    """(page, CLI, option) for every option a documented command passes to one of our CLIs."""
    uses = []
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for line in _commands(page.read_text()):
            for command in CLIS:
                invocation = "python sample.py" if command.endswith(".py") else command[7:]
                match = re.search(rf"{re.escape(invocation)}(?:\s|$)", line)
                if match is None:
                    continue
                rest = line[match.end():].split("&&")[0].split("|")[0]
                for token in shlex.split(rest, posix=True):
                    if token.startswith("--"):
                        uses.append((page.name, command, token.split("=")[0]))
    return uses


def test_documented_commands_use_real_options() -> None:
    uses = _documented_uses()
    assert len({command for _, command, _ in uses}) >= 6  # the scan finds the commands
    wrong = sorted({(page, command, option) for page, command, option in uses
                    if option not in _options(_parser(command))})
    assert not wrong, f"documented options that the CLI does not have: {wrong}"


@pytest.mark.parametrize("command", sorted(CLIS))
def test_every_cli_takes_threads(command: str) -> None:
    assert "--threads" in _options(_parser(command))
