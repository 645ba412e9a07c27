"""The documentation stays true to the tree: size of the front page, links, named scripts.

README.md is the front page (at most 12 KB); docs/<topic>.md hold the reference pages and
benchmarks/RESULTS.md the measured tables. Every relative link must reach an existing file (and
heading, when it names one), and every ``python <file>.py`` / ``python -m <module>`` they show
must name a file or module of this repository, so a rename cannot leave the docs behind.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TOPICS = (
    "norms",
    "training",
    "image-flows",
    "video-flows",
    "diffusion",
    "posterior",
    "pta",
    "benchmarks",
)
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SCRIPT = re.compile(r"\bpython3?\s+((?:[\w-]+/)*[\w-]+\.py)\b")
MODULE = re.compile(r"(?:\bpython3?|accelerate launch[^\n`]*?)\s+-m\s+([A-Za-z_][\w.]*)")


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.+)$", text, re.MULTILINE)}


def _module_exists(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()


def test_readme_is_a_front_page() -> None:
    size = README.stat().st_size
    assert size <= 12 * 1024, f"README.md is {size} bytes; the front page must stay <= 12 KB"


def test_every_topic_page_exists_and_the_readme_links_it() -> None:
    text = README.read_text()
    for topic in TOPICS:
        assert (ROOT / "docs" / f"{topic}.md").is_file(), f"docs/{topic}.md is missing"
        assert f"(docs/{topic}.md" in text, f"README.md does not link docs/{topic}.md"
    assert "(benchmarks/RESULTS.md" in text, "README.md does not link benchmarks/RESULTS.md"


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert f"```bash\n{command}\n```" in README.read_text(), command


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_relative_links_reach_files_and_headings(page: Path) -> None:
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {file.name})")
    assert not broken, f"{_page_id(page)}: broken links: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_commands_name_existing_scripts_and_modules(page: Path) -> None:
    text = page.read_text()
    missing = [f"python {s}" for s in SCRIPT.findall(text) if not (ROOT / s).is_file()]
    missing += [f"-m {m}" for m in MODULE.findall(text) if not _module_exists(m)]
    assert not missing, f"{_page_id(page)} names what does not exist: {missing}"


def test_the_command_patterns_catch_a_stale_name() -> None:
    # The checks above are only as good as their patterns: a renamed script or module in a
    # typical command line must be found, and a pytest marker must not be taken for a module.
    text = (
        "python benchmarks/norms.py --quick\n"
        "accelerate launch --multi_gpu --num_processes 2 -m trainers.training --config x\n"
        "python -m flows.video --checkpoint DIR\n"
        "pytest -m slow\n"
    )
    assert SCRIPT.findall(text) == ["benchmarks/norms.py"]
    assert MODULE.findall(text) == ["trainers.training", "flows.video"]
    assert not (ROOT / "benchmarks" / "norms.py").exists()
    assert not _module_exists("trainers.training") and _module_exists("flows.video")
    assert _module_exists("flows.pta")  # a package run through its __main__.py
