"""benchmarks/video.py: --device is checked in one line before any model is built, and is
passed to the model it times (a tiny run on the CPU; the CUDA run is benchmarks/gpu.sh's)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from flows.video import VideoTransformerFlow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def video():
    spec = importlib.util.spec_from_file_location("video_benchmark",
                                                  ROOT / "benchmarks" / "video.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["video_benchmark"] = module
    spec.loader.exec_module(module)
    return module


def _no_model(checkpoint, device):
    raise AssertionError("a model was built for a refused command line")


@pytest.mark.parametrize("argv, message", [
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    pytest.param(["--device", "cuda"], "--device cuda asked for, but torch sees no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")),
])
def test_bad_device_is_one_error_line(video, monkeypatch, capsys, argv, message) -> None:
    monkeypatch.setattr(video, "load_model", _no_model)
    assert video.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"error: {message}")
    assert captured.err.count("\n") == 1


def test_device_reaches_the_timed_model(video, monkeypatch, capsys) -> None:
    asked = []

    def tiny(checkpoint, device):
        asked.append(device)
        model = VideoTransformerFlow(frames=2, image_size=4, in_channels=1, patch_size=2,
                                     width=16, num_heads=2, local_blocks=1, local_depth=1,
                                     global_depth=1, text_tokens=0)
        return model.to(device).eval()

    monkeypatch.setattr(video, "load_model", tiny)
    assert video.main(["--device", "cpu", "--batches", "1", "--repeats", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert asked == ["cpu"] and summary["device"] == "cpu"
    assert [row["method"].split(" ->")[0] for row in summary["speed"]][-1] == "auto"
    assert all(row["max_abs_diff"] < 1e-4 for row in summary["speed"])
