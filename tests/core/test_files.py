"""core.files: atomic writes leave the old file or the whole new one; strict JSON values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from core.files import json_ready, write_atomically, write_text_atomically


def test_write_atomically_replaces_the_whole_file_and_makes_folders(tmp_path: Path) -> None:
    target = tmp_path / "new" / "folder" / "report.json"
    write_text_atomically(target, "first")
    assert target.read_text() == "first"
    write_atomically(target, lambda tmp: tmp.write_bytes(b"second"))
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old")

    def crash(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, crash)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]


def test_json_ready_makes_strict_json_of_numpy_torch_paths_and_non_finite() -> None:
    value = {
        1: np.float32(0.5),
        "array": np.arange(3),
        "tensor": torch.tensor([1.5, float("inf")]),
        "scalar": torch.tensor(2),
        "path": Path("a") / "b",
        "nested": [(math.nan, np.int64(7))],
    }
    ready = json_ready(value)
    assert ready == {
        "1": 0.5,
        "array": [0, 1, 2],
        "tensor": [1.5, None],
        "scalar": 2,
        "path": str(Path("a") / "b"),
        "nested": [[None, 7]],
    }
    assert type(ready["1"]) is float and type(ready["nested"][0][1]) is int
    json.dumps(ready, allow_nan=False)  # raises on anything strict JSON refuses
