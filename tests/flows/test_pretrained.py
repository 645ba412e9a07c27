"""The shipped flows: each name resolves, loads, fits the size rule and samples the right shapes.

Quality is measured by benchmarks/quality.py, not here: these tests only check what a user of a
fresh clone relies on (tiny sampling settings).
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import sample
from core import registry
from core.checkpoint import installed_shipped_models, load_model

FLOWS = ("digits_tarflow", "moving_digits_video")
MAX_WEIGHT_BYTES = 15 * 2**20  # team rule: at most 15 MB of safetensors per shipped model


def _installed(name: str):
    return pytest.param(
        name,
        marks=pytest.mark.skipif(
            name not in installed_shipped_models(), reason=f"{name} is not in this checkout"
        ),
    )


@pytest.mark.parametrize("name", [_installed(name) for name in FLOWS])
def test_shipped_flow_resolves_loads_and_is_small(name) -> None:
    kind, _ = registry.shipped_models()[name]
    folder = registry.shipped_folder(name)
    model, config = load_model(name, kind=kind.name)
    assert config["model"]["name"] == kind.name and not model.training
    weights = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    assert 0 < weights <= MAX_WEIGHT_BYTES
    # the weights sampled by default are the ones whose config the checkpoint describes
    for key in ("width", "noise_sigma"):
        assert model.config[key] == config["model"][key]


@pytest.mark.parametrize("name", [_installed("digits_tarflow")])
def test_digits_sample_one_of_each_class(name, tmp_path, capsys) -> None:
    out = tmp_path / "digits.png"
    args = ["--checkpoint", name, "--num", "10", "--out", str(out), "--no-progress"]
    assert sample.main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sample_shape"] == [1, 8, 8] and summary["num"] == 10
    with Image.open(out) as image:  # one row of ten 8x8 digits, scaled 8x, 1 px gaps
        assert image.size == (8 * (10 * 9 + 1), 8 * 10)
        grey = set(image.convert("L").getdata())
    assert len(grey) <= 17 + 1  # the data's 17 grey levels (model.levels), and the white gaps


@pytest.mark.parametrize("name", [_installed("moving_digits_video")])
def test_video_samples_past_its_training_length(name, tmp_path, capsys) -> None:
    model, _ = load_model(name)
    frames = model.config.frames + 2  # the window slides
    out = tmp_path / "clip.gif"
    args = ["--checkpoint", name, "--prompt", "a 3 and a 7 moving apart", "--frames",
            str(frames), "--out", str(out), "--scale", "2", "--no-progress"]  # fmt: skip
    assert sample.main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sample_shape"] == [frames, 1, 16, 16]
    with Image.open(out) as gif:
        assert gif.n_frames == frames and gif.size == (32, 32)
        gif.seek(frames - 1)
        last = torch.tensor(list(gif.convert("L").getdata()), dtype=torch.float32)
    assert last.max() > 100  # the last frame past the window still shows bright strokes


@pytest.mark.parametrize("name", [_installed("moving_digits_video")])
def test_video_mp4_reads_back(name, tmp_path, capsys) -> None:
    pytest.importorskip("av")
    from flows.video.io import read_video

    out = tmp_path / "clip.mp4"
    args = ["--checkpoint", name, "--prompt", "a 1 and a 4", "--frames", "3", "--out",
            str(out), "--scale", "2", "--no-progress"]  # fmt: skip
    assert sample.main(args) == 0
    assert read_video(out).shape == (3, 3, 32, 32)


@pytest.mark.parametrize("name", [_installed("moving_digits_video")])
def test_mp4_without_pyav_is_one_line_naming_the_install(name, tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda module, *a: None if module == "av" else find_spec(module, *a),
    )
    out = tmp_path / "clip.mp4"
    args = ["--checkpoint", name, "--prompt", "a 1 and a 4", "--out", str(out)]
    assert sample.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "pip install av" in err
    assert ".gif" in err and not out.exists()
