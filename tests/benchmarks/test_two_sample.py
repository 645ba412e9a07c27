"""The C2ST helper the quality benchmarks use: chance on one distribution, ~1 on two far apart."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "two_sample.py"
_SPEC = importlib.util.spec_from_file_location("two_sample", _PATH)
two_sample = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(two_sample)


def test_c2st_is_near_chance_for_one_distribution_and_near_one_for_two() -> None:
    rng = np.random.default_rng(1)
    same = two_sample.c2st(rng.normal(size=(300, 4)), rng.normal(size=(300, 4)))
    apart = two_sample.c2st(rng.normal(size=(300, 4)), rng.normal(size=(300, 4)) + 3.0)
    assert abs(same["c2st"] - 0.5) < 0.08
    assert apart["c2st"] > 0.97 and apart["n"] == 300


def test_c2st_balances_the_classes_and_checks_shapes() -> None:
    rng = np.random.default_rng(2)
    assert two_sample.c2st(rng.normal(size=(500, 3)), rng.normal(size=(60, 3)))["n"] == 60
    with pytest.raises(ValueError, match="real items have 3 features, generated 4"):
        two_sample.c2st(rng.normal(size=(50, 3)), rng.normal(size=(50, 4)))
