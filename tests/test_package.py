"""The floor: the package imports, is lint-clean, and the norm registry answers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import norms

ROOT = Path(__file__).resolve().parents[1]


def test_subpackages_import() -> None:
    import core  # noqa: F401
    import diffusion  # noqa: F401
    import flows  # noqa: F401
    import trainers  # noqa: F401


def test_unknown_norm_lists_known_names() -> None:
    with pytest.raises(ValueError, match="choose one of: .*layernorm.*rmsnorm"):
        norms.build_norm("rmsnrom", 8)


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    result = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.float64
def test_float64_marker_sets_and_restores_default_dtype() -> None:
    assert torch.get_default_dtype() == torch.float64
    assert torch.zeros(1).dtype == torch.float64


def test_default_dtype_is_float32_outside_float64_tests() -> None:
    assert torch.get_default_dtype() == torch.float32
