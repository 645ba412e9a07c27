"""Pickle-free training state: nested state <-> safetensors + JSON, RNG states as lists."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from trainers.config import OptimizerConfig
from trainers.optim import OPTIMIZERS, build_optimizer
from trainers.rng import capture_rng_state, restore_rng_state
from trainers.state_io import CheckpointError, flatten, load_state, save_state, unflatten


def same(a, b) -> bool:
    """Equal values of equal types all the way down (tensors: dtype, shape and bits)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


TRICKY = {
    "state": {0: {"step": torch.tensor(3.0), "m": torch.randn(2, 3)}, 7: {"step": 4}},
    "mixed": {1: "int key", "1": "str key"},
    "betas": (0.9, 0.999),
    "nested": [(1, [2, (3,)]), None, True, False, "text"],
    "floats": [math.inf, -math.inf, math.nan, 1e-300, 0.1],
    "looks_like_a_marker": {"tensor": "not a reference"},
    "also": {"dict": [[1, 2]]},
    "dtypes": [torch.arange(4, dtype=torch.int64), torch.ones(2, dtype=torch.bfloat16),
               torch.tensor([True, False]), torch.zeros(0, 5, dtype=torch.float64)],
    "empty": {},
}


def test_flatten_round_trip_keeps_types_keys_and_nonfinite_floats(tmp_path):
    tensors, skeleton = flatten(TRICKY)
    json.dumps(skeleton, allow_nan=False)  # strict JSON: no NaN/Infinity literals
    assert all(isinstance(t, torch.Tensor) for t in tensors.values()) and len(tensors) == 6
    assert same(unflatten(tensors, skeleton), TRICKY)
    save_state(tmp_path, "state", TRICKY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.safetensors"]
    assert same(load_state(tmp_path, "state"), TRICKY)
    save_state(tmp_path, "state", TRICKY, rank=3)
    assert same(load_state(tmp_path, "state", rank=3), TRICKY)
    assert (tmp_path / "state-rank3.safetensors").is_file()


@pytest.mark.parametrize("bad, where", [
    ({"a": {1, 2}}, "a"), ({"a": [torch.device("cpu")]}, "a/0"), ({True: 1}, "True"),
    ({(1, 2): 0}, "(1, 2)"), ({"x": object()}, "x"),
])
def test_what_json_cannot_hold_is_refused_with_its_place(bad, where):
    with pytest.raises(ValueError, match="without pickle") as info:
        flatten(bad)
    assert where in str(info.value)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_state_survives_the_files_exactly(tmp_path, name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))
    config = OptimizerConfig(name=name, lr=0.01, weight_decay=0.1, conda_update_period=2)

    def steps(m, opt, seeds):
        for seed in seeds:
            x = torch.randn(8, 6, generator=torch.Generator().manual_seed(seed))
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()

    optimizer = build_optimizer(model, config)
    steps(model, optimizer, [1, 2, 3])
    save_state(tmp_path, "opt", {"optimizer": optimizer.state_dict()})
    twin = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))
    twin.load_state_dict(model.state_dict())
    twin_optimizer = build_optimizer(twin, config)
    twin_optimizer.load_state_dict(load_state(tmp_path, "opt")["optimizer"])
    steps(model, optimizer, [4, 5, 6])
    steps(twin, twin_optimizer, [4, 5, 6])
    torch.testing.assert_close(dict(twin.state_dict()), dict(model.state_dict()), rtol=0, atol=0)
    # without the restored state the continuation differs (the test can fail)
    fresh = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))
    fresh.load_state_dict(twin.state_dict())
    fresh_optimizer = build_optimizer(fresh, config)
    steps(fresh, fresh_optimizer, [7])
    steps(twin, twin_optimizer, [7])
    assert not torch.equal(fresh[0].weight, twin[0].weight)


def test_damaged_state_files_raise_one_line_checkpoint_errors(tmp_path):
    save_state(tmp_path, "s", {"m": torch.ones(3), "n": 2})
    good_tensors = (tmp_path / "s.safetensors").read_bytes()
    good_json = (tmp_path / "s.json").read_text()
    cases = {
        "truncated tensors": ("s.safetensors", good_tensors[: len(good_tensors) // 2]),
        "garbage tensors": ("s.safetensors", b"\x80\x04K\x01."),
        "broken json": ("s.json", good_json[:-5]),
        "not our format": ("s.json", json.dumps({"format": "other", "state": {}})),
        "missing tensor": ("s.json", good_json.replace('"m"}', '"q"}')),
        "bad marker": ("s.json", good_json.replace('{"tensor": "m"}', '{"tuple": 5}')),
    }
    for label, (name, content) in cases.items():
        path = tmp_path / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        with pytest.raises(CheckpointError) as info:
            load_state(tmp_path, "s")
        assert "\n" not in str(info.value) and "s." in str(info.value), label
        (tmp_path / "s.safetensors").write_bytes(good_tensors)
        (tmp_path / "s.json").write_text(good_json)
    (tmp_path / "s.json").unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        load_state(tmp_path, "s")


def test_rng_state_round_trip_through_json():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's state
    state = json.loads(json.dumps(capture_rng_state(), allow_nan=False))
    first = (random.random(), np.random.standard_normal(3).tolist(), torch.randn(3).tolist())
    restore_rng_state(state)
    again = (random.random(), np.random.standard_normal(3).tolist(), torch.randn(3).tolist())
    assert first == again
    for broken in ({}, {**state, "torch": [1, 2, 3]}, {**state, "numpy": ["MT19937", [1]]},
                   {**state, "python": [3, [-1] * 625, None]}):
        with pytest.raises(ValueError, match="random-number state is malformed"):
            restore_rng_state(broken)
