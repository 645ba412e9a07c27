"""sample.py: the shipped default run, a checkpoint run, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import sample
from flows.image import TransformerFlow

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "flows" / "pretrained" / "digits_tarflow"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A run directory with one trainer-style checkpoint of a tiny conditional TARFlow."""
    run = tmp_path_factory.mktemp("run")
    folder = run / "checkpoint-7"
    kwargs = dict(image_size=8, in_channels=1, patch_size=2, width=16, num_heads=2,
                  layers_per_block=[1, 1], num_classes=3)  # fmt: skip
    torch.manual_seed(0)
    flow = TransformerFlow(**kwargs)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    flow.save_pretrained(folder / "model")
    config = {"model": {"name": "tarflow", **kwargs}, "data": {"name": "digits", "batch_size": 4}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = sample.main(args + ["--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_checkpoint_run_writes_grid_and_summary(tiny_checkpoint, tmp_path, capsys) -> None:
    png = tmp_path / "grid.png"
    args = ["--checkpoint", str(tiny_checkpoint), "--num", "6", "--class", "2", "--out", str(png)]
    code, out, err = _run(args + ["--method", "jacobi", "--guidance", "1.0"], capsys)
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["model"] == "tarflow" and summary["method"] == "jacobi"
    assert summary["checkpoint"] == str(tiny_checkpoint / "checkpoint-7")
    assert summary["sample_shape"] == [1, 8, 8] and summary["num"] == 6
    assert len(summary["iterations"]) == 2 and all(k >= 1 for k in summary["iterations"])
    assert summary["wall_time_s"] > 0
    with Image.open(png) as image:
        assert image.size[0] > 8 * 2 and image.size[1] > 8
    code, out, _ = _run(args + ["--method", "sequential", "--seed", "3"], capsys)
    assert code == 0 and json.loads(out)["iterations"] == [16, 16]  # class prefix: all 16 tokens


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num", "-1"], "--num must be a positive number of samples, got -1"),
        (["--class", "3"], "--class must lie in 0..2, got 3"),
        (["--class", "-1"], "--class must lie in 0..2, got -1"),
        (["--jacobi-threshold", "-1"], "--jacobi-threshold must be >= 0"),
    ],
)
def test_bad_options_exit_2(tiny_checkpoint, tmp_path, capsys, extra, message) -> None:
    code, out, err = _run(
        ["--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "x.png"), *extra], capsys
    )
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()


def test_bad_checkpoints_exit_2(tiny_checkpoint, tmp_path, capsys) -> None:
    missing = tmp_path / "nowhere"
    code, _, err = _run(["--checkpoint", str(missing)], capsys)
    assert code == 2 and "does not exist" in err and err.count("\n") == 1

    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(["--checkpoint", str(empty)], capsys)
    assert code == 2 and "neither a checkpoint" in err

    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "config.yaml").write_text("model: [unclosed")
    code, _, err = _run(["--checkpoint", str(garbled)], capsys)
    assert code == 2 and "cannot read" in err and err.count("\n") == 1

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "no_such_model"}}))
    code, _, err = _run(["--checkpoint", str(other)], capsys)
    assert code == 2 and "model kind 'no_such_model' has no sampler" in err
    sample.SAMPLERS["no_such_model"] = "diffusion.no_such_module:sample"
    try:
        code, _, err = _run(["--checkpoint", str(other)], capsys)
    finally:
        del sample.SAMPLERS["no_such_model"]
    assert code == 2 and "is unavailable" in err and err.count("\n") == 1

    broken = tmp_path / "broken"
    source = tiny_checkpoint / "checkpoint-7"
    (broken / "model").mkdir(parents=True)
    (broken / "config.yaml").write_text((source / "config.yaml").read_text())
    (broken / "model" / "config.json").write_text((source / "model" / "config.json").read_text())
    (broken / "model" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a tensor file")
    code, _, err = _run(["--checkpoint", str(broken), "--out", str(tmp_path / "b.png")], capsys)
    assert code == 2 and "cannot load the weights" in err and err.count("\n") == 1

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.yaml").write_text((source / "config.yaml").read_text())
    code, _, err = _run(["--checkpoint", str(no_weights)], capsys)
    assert code == 2 and "has no model weights folder" in err


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="the shipped model is not in this checkout")
def test_default_run_samples_the_shipped_model(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "sample.py"), "--num", "8", "--no-progress"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["model"] == "tarflow"
    assert Path(summary["checkpoint"]).resolve() == SHIPPED.resolve()
    assert summary["sample_shape"] == [1, 16, 16]
    assert len(summary["iterations"]) >= 4
    with Image.open(tmp_path / "samples.png") as image:
        grid = torch.tensor(list(image.getdata()), dtype=torch.float32)
    assert grid.std() > 20  # digits, not a blank or saturated canvas


def test_trainer_checkpoint_round_trip(tmp_path, capsys) -> None:
    """The project's trainer trains configs/digits_tarflow.yaml (shrunk) and sample.py reads it."""
    from trainers import load_config
    from trainers.train import train

    overrides = [
        "model.image_size=8", "data.size=8", "model.width=16", "model.num_heads=2",
        "model.layers_per_block=[1, 1]", "data.batch_size=16", "trainer.max_steps=3",
        "trainer.warmup_steps=1", "trainer.checkpoint_every=3", "trainer.sample_every=0",
        "trainer.plot=false", "trainer.progress=false", "trainer.log_every=1",
        f"trainer.output_dir={tmp_path / 'run'}",
    ]  # fmt: skip
    train(load_config(str(ROOT / "configs" / "digits_tarflow.yaml"), overrides))
    capsys.readouterr()
    code, out, err = _run(["--checkpoint", str(tmp_path / "run"), "--num", "4",
                           "--out", str(tmp_path / "s.png")], capsys)  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary["checkpoint"].endswith("checkpoint-3") and summary["sample_shape"] == [1, 8, 8]
