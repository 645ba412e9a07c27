"""sample.py: the shipped default, shipped names and --list, checkpoint runs, one-line errors."""

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
from core import registry
from core.checkpoint import installed_shipped_models
from core.registry import ModelKind
from tests.core.helpers import sandbox_registry, write_tiny_flow

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "flows" / "pretrained" / "digits_tarflow"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A run directory with one trainer-style checkpoint of a tiny conditional TARFlow."""
    run = tmp_path_factory.mktemp("run")
    write_tiny_flow(run / "checkpoint-7")
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
    code, out, _ = _run(args + ["--method", "sequential", "--seed", "3", "--threads", "1"], capsys)
    assert code == 0 and json.loads(out)["iterations"] == [16, 16]  # class prefix: all 16 tokens


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num", "-1"], "argument --num: must be an integer >= 1, got '-1'"),
        (["--num", "0"], "argument --num: must be an integer >= 1, got '0'"),
        (["--guidance", "nan"], "argument --guidance: must be a finite number, got 'nan'"),
        (["--guidance", "inf"], "argument --guidance: must be a finite number, got 'inf'"),
        (["--jacobi-threshold", "-1"], "argument --jacobi-threshold: must be a finite number >= 0"),
        (["--jacobi-threshold", "nan"], "must be a finite number >= 0, got 'nan'"),
        (["--jacobi-max-iter", "0"], "argument --jacobi-max-iter: must be an integer >= 1"),
        (["--frames", "0"], "argument --frames: must be an integer >= 1"),
        (["--steps", "0"], "argument --steps: must be an integer >= 1"),
        (["--method", "fast"], "argument --method: invalid choice: 'fast'"),
        (["--nmu", "3"], "unrecognized arguments: --nmu 3"),
        (["--class", "3"], "--class must lie in 0..2, got 3"),
        (["--class", "-1"], "--class must lie in 0..2, got -1"),
    ],
)
def test_bad_options_exit_2(tiny_checkpoint, tmp_path, capsys, extra, message) -> None:
    code, out, err = _run(
        ["--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "x.png"), *extra], capsys
    )
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()


def test_bad_checkpoints_exit_2(tiny_checkpoint, tmp_path, capsys, monkeypatch) -> None:
    def error_of(folder: Path) -> str:
        code, out, err = _run(["--checkpoint", str(folder), "--out", str(tmp_path / "b.png")],
                              capsys)  # fmt: skip
        assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1
        return err

    assert "does not exist and is not a shipped model name" in error_of(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "neither a checkpoint" in error_of(empty)

    def folder_with(name: str, config: dict) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        return folder

    garbled = folder_with("garbled", {})
    (garbled / "config.yaml").write_text("model: [unclosed")
    assert "cannot read" in error_of(garbled)
    unknown = folder_with("unknown", {"model": {"name": "no_such_model"}})
    assert "model 'no_such_model' is unknown" in error_of(unknown)
    smoke = folder_with("smoke", {"model": {"name": "smoke_mlp"}})
    assert "model kind 'smoke_mlp' has no sampler; sample.py samples: " in error_of(smoke)
    sandbox_registry(monkeypatch)
    registry.register(ModelKind("ghost", model="trainers.smoke:SmokeMLP",
                                sampler="diffusion.no_such_module:sample"))
    ghost = folder_with("ghost", {"model": {"name": "ghost"}})
    assert "'diffusion.no_such_module:sample', which cannot be imported" in error_of(ghost)

    source = tiny_checkpoint / "checkpoint-7"
    broken = tmp_path / "broken"
    (broken / "model").mkdir(parents=True)
    (broken / "config.yaml").write_text((source / "config.yaml").read_text())
    (broken / "model" / "config.json").write_text((source / "model" / "config.json").read_text())
    (broken / "model" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a tensor file")
    assert "cannot load the weights" in error_of(broken)
    no_weights = folder_with("no_weights", yaml.safe_load((source / "config.yaml").read_text()))
    assert "has no model weights folder" in error_of(no_weights)
    renamed = yaml.safe_load((source / "config.yaml").read_text())
    renamed["model"]["label_dropout"] = 0.1
    old = folder_with("old", renamed)
    assert "was renamed to 'model.condition_dropout'" in error_of(old)
    assert not (tmp_path / "b.png").exists()


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="the shipped model is not in this checkout")
def test_default_run_samples_the_shipped_model(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "sample.py"), "--num", "8", "--no-progress"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["model"] == "tarflow"
    assert Path(summary["checkpoint"]).resolve() == SHIPPED.resolve()
    assert summary["sample_shape"] == [1, 8, 8]
    assert len(summary["iterations"]) >= 4
    with Image.open(tmp_path / "samples.png") as image:
        grid = torch.tensor(list(image.getdata()), dtype=torch.float32)
    assert grid.std() > 20  # digits, not a blank or saturated canvas


def _normal_map_png(path: Path) -> Path:
    """A sphere's normal map (the encoding of diffusion.normal_maps: rgb = (n + 1) / 2)."""
    grid = torch.linspace(-1, 1, 32)
    y, x = torch.meshgrid(grid, grid, indexing="ij")
    inside = x**2 + y**2 < 0.8
    z = (1 - x**2 - y**2).clamp(min=0).sqrt()
    rgb = torch.stack([x, -y, z]) * 0.5 + 0.5
    pixels = (rgb * inside * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(path)
    return path


# Options that keep each kind's shipped model quick to sample, and the file each one writes.
QUICK = {
    "tarflow": lambda tmp: ["--num", "4", "--out", str(tmp / "out.png")],
    "video_tarflow": lambda tmp: ["--frames", "3", "--prompt", "a 3 and a 7",
                                  "--out", str(tmp / "out.gif")],
    "normal_adapted": lambda tmp: ["--num", "2", "--steps", "2", "--out", str(tmp / "out.png")],
    "normal_aligned": lambda tmp: ["--num", "1", "--steps", "2", "--out", str(tmp / "out.png"),
                                   "--normal-map", str(_normal_map_png(tmp / "map.png"))],
}  # fmt: skip


@pytest.mark.parametrize("name", list(installed_shipped_models()))
def test_every_shipped_name_samples(name, tmp_path, capsys) -> None:
    kind = registry.shipped_models()[name][0].name
    code, out, err = _run(["--checkpoint", name, *QUICK[kind](tmp_path)], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["model"] == kind
    assert Path(summary["checkpoint"]) == registry.shipped_folder(name)
    assert Path(summary["out"]).is_file() and Path(summary["out"]).parent == tmp_path
    if kind == "tarflow":
        assert summary["sample_shape"] == [1, 8, 8] and summary["num"] == 4


def test_shipped_name_is_the_default_bit_for_bit(tmp_path, capsys) -> None:
    common = ["--num", "10", "--seed", "4", "--method", "sequential"]
    assert _run([*common, "--out", str(tmp_path / "a.png")], capsys)[0] == 0
    by_name = [*common, "--checkpoint", "digits_tarflow", "--out", str(tmp_path / "b.png")]
    assert _run(by_name, capsys)[0] == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_help_and_list_import_no_torch() -> None:
    code = ("import sys, contextlib, io, sample\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    sample.main(['--help'])\n"
            "sample.main(['--list'])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.strip().splitlines()
    assert header.split()[:5] == ["name", "kind", "data", "size", "trained"]
    assert sorted(row.split()[0] for row in rows) == sorted(installed_shipped_models())
    digits = next(row for row in rows if row.startswith("digits_tarflow "))
    assert digits.split()[1:3] == ["tarflow", "digits"]
    assert " MB " in digits and "5000 steps, adamw" in digits and "handwritten digits" in digits


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


def test_config_sample_section_sets_defaults_the_user_overrides(tmp_path, capsys) -> None:
    folder = write_tiny_flow(tmp_path / "tuned")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    (folder / "config.yaml").write_text(yaml.safe_dump({**config, "sample": {"guidance": 1.5}}))
    common = ["--num", "4", "--class", "1", "--method", "sequential"]

    def grid(*args: str) -> tuple[bytes, float]:
        out = tmp_path / f"{len(list(tmp_path.glob('*.png')))}.png"
        code, text, err = _run([*common, *args, "--out", str(out)], capsys)
        assert code == 0, err
        return out.read_bytes(), json.loads(text)["guidance"]

    tuned, guidance = grid("--checkpoint", str(folder))
    assert guidance == 1.5
    assert grid("--checkpoint", str(folder), "--guidance", "1.5") == (tuned, 1.5)
    plain, guidance = grid("--checkpoint", str(folder), "--guidance", "0")
    assert guidance == 0 and plain != tuned
    (folder / "config.yaml").write_text(yaml.safe_dump({**config, "sample": {"guidanse": 1}}))
    code, out, err = _run(["--checkpoint", str(folder), "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "section 'sample'" in err and "'guidanse'" in err
