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



def test_png_levels_are_the_float64_levels_real_data_has() -> None:
    """Generated images on the 8-bit lattice equal real k/255 exactly: a float32 division would
    differ in the last bits, and the histogram classifier would tell the two apart by that."""
    import torch

    k = torch.arange(256, dtype=torch.float64)
    assert np.array_equal(two_sample.png_levels((k / 127.5 - 1).float()[None])[0], k.numpy() / 255)
    rng = np.random.default_rng(0)
    lattice = np.round(np.arange(17) * 255 / 16)  # the 8-bit levels of 17-level digits
    real = lattice[rng.integers(0, 17, (300, 16))] / 255.0
    drawn = torch.tensor(lattice[rng.integers(0, 17, (300, 16))] / 127.5 - 1).float()
    same = two_sample.c2st(real, two_sample.png_levels(drawn))
    assert abs(same["c2st"] - 0.5) < 0.08  # one distribution: chance, not a float32 leak
