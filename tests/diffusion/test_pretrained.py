"""The shipped normal-map models: names resolve, weights load and fit, sample.py writes files.

Quality thresholds live in benchmarks/quality_diffusion.py, not here; these tests check that
each shipped model is what its folder says and that the README's two commands run (with few
denoising steps, to stay fast).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import sample
from core.checkpoint import load_model, resolve_source
from diffusion.models import NormalAdaptedDiffusion, NormalAlignedDiffusion

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = {"normal_adapted": NormalAdaptedDiffusion, "normal_aligned": NormalAlignedDiffusion}
LIMIT_BYTES = 15 * 10**6


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_name_resolves_loads_and_fits(name: str) -> None:
    folder = resolve_source(name)
    assert folder == ROOT / "diffusion" / "pretrained" / name
    weights = sorted(folder.rglob("*.safetensors"))
    assert weights and sum(w.stat().st_size for w in weights) <= LIMIT_BYTES
    model, config = load_model(name)
    assert type(model) is SHIPPED[name] and config["model"]["name"] == name
    assert not model.training
    # The shipped config is the committed recipe the README tells users to train with.
    # Models trained in two stages ship the second (trainer.init_from names the first).
    stage2 = ROOT / "configs" / f"{name}_stage2.yaml"
    recipe_file = stage2 if stage2.is_file() else ROOT / "configs" / f"{name}.yaml"
    recipe = yaml.safe_load(recipe_file.read_text())
    assert config["model"] == recipe["model"]
    assert config["trainer"]["max_steps"] == recipe["trainer"]["max_steps"]
    assert json.loads((folder / "trainer_state.json").read_text())["step"] == \
        recipe["trainer"]["max_steps"]


def test_the_readme_commands_chain_both_shipped_models(tmp_path, capsys) -> None:
    normals = tmp_path / "normals.png"
    code = sample.main(["--checkpoint", "normal_adapted", "--prompt", "front view, full body",
                        "--num", "3", "--steps", "2", "--out", str(normals)])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["model"] == "normal_adapted" and summary["num"] == 3
    with Image.open(normals) as image:  # three 32x32 maps side by side, no gaps
        assert image.size == (3 * 32, 32)
    color = tmp_path / "color.png"
    code = sample.main(["--checkpoint", "normal_aligned", "--normal-map", str(normals),
                        "--steps", "2", "--out", str(color)])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["model"] == "normal_aligned"
    assert summary["num"] == summary["maps"] == 3  # one image per map of the grid
    assert -1.0 <= summary["shading_correlation"] <= 1.0
    with Image.open(color) as image:  # the matching grid: image i where map i was
        assert image.size == (3 * 32, 32)
        tiles = np.asarray(image.convert("RGB")).reshape(32, 3, 32, 3)
    with Image.open(normals) as image:
        maps = np.asarray(image.convert("RGB")).reshape(32, 3, 32, 3)
    # The aligned model paints only the foreground of its own map (mask_background); a dark
    # colour may round to black inside the figure, so that side is checked on most pixels.
    background, painted = maps.max(axis=-1) == 0, tiles.max(axis=-1) > 0
    assert not painted[background].any()
    assert painted[~background].mean() > 0.9


def test_a_single_map_png_is_one_map_even_when_its_side_is_a_multiple_of_32(
    tmp_path, capsys
) -> None:
    # A 64x64 map of one figure without normkit's grid mark: one map, not four tiles.
    normals = tmp_path / "normals.png"
    assert sample.main(["--checkpoint", "normal_adapted", "--prompt", "back view, only head",
                        "--num", "1", "--steps", "2", "--out", str(normals)]) == 0
    capsys.readouterr()
    with Image.open(normals) as image:
        image.convert("RGB").resize((64, 64), Image.NEAREST).save(tmp_path / "big.png")
    color = tmp_path / "color.png"
    assert sample.main(["--checkpoint", "normal_aligned", "--normal-map",
                        str(tmp_path / "big.png"), "--num", "2", "--steps", "2",
                        "--out", str(color)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["maps"] == 1 and summary["num"] == 2
    with Image.open(color) as image:  # two images of the one map, side by side
        assert image.size == (2 * 32, 32)
