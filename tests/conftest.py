"""Shared pytest set-up: markers, per-test seeding, offline hub, float64 marker."""

from __future__ import annotations

import contextlib
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny test models gain nothing from intra-op threads, and OpenMP worker threads spinning on a
# busy 2-core machine slowed the suite several-fold; subprocess tests inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA; no GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def seeded_rng() -> None:
    """Every test starts from the same random state, whatever ran before it."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield dtype
    finally:
        torch.set_default_dtype(previous)


@pytest.fixture(autouse=True)
def _float64_marker(request: pytest.FixtureRequest):
    """``@pytest.mark.float64``: run the test with float64 as torch's default dtype."""
    if request.node.get_closest_marker("float64") is None:
        yield
        return
    with _default_dtype(torch.float64):
        yield
