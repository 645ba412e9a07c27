"""Every recipe in configs/ says in its header what it is for, how long it runs on a CPU and on
one GPU (the GPU figure labelled an estimate unless measured), and the smallest
``trainer.max_steps`` that gives recognisable output; the launcher files say what they are for
and how their wall time follows from the recipe's."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml"))


def _header(path: str) -> str:
    lines = (ROOT / path).read_text().splitlines()
    return "\n".join(line for line in lines[: next(i for i, l in enumerate(lines)
                                                    if not l.startswith("#"))])


@pytest.mark.parametrize("path", CONFIGS)
def test_header_says_what_when_and_how_short(path: str) -> None:
    header = _header(path)
    assert yaml.safe_load((ROOT / path).read_text())  # still a config
    assert "# For: " in header and "# Wall time: " in header, header
    assert "GPU" in header
    if "/accelerate/" not in path:
        assert "CPU" in header and "# Smallest trainer.max_steps: " in header, header
        gpu = next(line for line in header.splitlines() if "GPU" in line)
        assert "estimate" in header[header.index(gpu):], "label the GPU time as an estimate"
