"""NormalMapDataset's render cache: safetensors with the render settings as metadata, read back
exactly; a cache of other renders, of another format or a .pt path is one clear ValueError and
the file is left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from diffusion.data import NormalMapDataset

TINY = dict(resolution=8, num_samples=3, seed=0, max_steps=16, flip=False)


def _refused(path: Path, message: str, **settings) -> None:
    before = path.read_bytes()
    with pytest.raises(ValueError) as error:
        NormalMapDataset(**{**TINY, **settings}, cache=str(path))
    assert message in str(error.value) and "\n" not in str(error.value)
    assert path.read_bytes() == before  # nothing overwritten


@pytest.fixture(scope="module")
def cached(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    path = tmp_path_factory.mktemp("cache") / "renders.safetensors"
    return path, NormalMapDataset(**TINY, cache=str(path)).data


def test_cache_is_safetensors_read_back_without_rendering(cached, monkeypatch) -> None:
    path, data = cached
    with safe_open(path, framework="pt") as file:
        assert set(file.keys()) == {"x", "color", "mask", "view", "framing"}
        assert '"num_samples": 3' in file.metadata()["normkit_render_settings"]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left over

    def no_render(settings):
        raise AssertionError("rendered again although the cache holds these renders")

    monkeypatch.setattr(NormalMapDataset, "_render", staticmethod(no_render))
    again = NormalMapDataset(**TINY, cache=str(path)).data
    assert again.keys() == data.keys()
    for name in data:
        assert again[name].dtype == data[name].dtype and torch.equal(again[name], data[name])


def test_cache_of_other_renders_is_refused(cached) -> None:
    path, _ = cached
    _refused(path, "holds other renders: num_samples 3 (asked: 4); delete it", num_samples=4)
    _refused(path, "framings [0, 1, 2] (asked: [1])", framings=(1,))


def test_cache_of_another_format_is_refused(cached, tmp_path) -> None:
    pickled = tmp_path / "old.safetensors"
    torch.save({"key": [8, 3], "data": cached[1]}, pickled)
    _refused(pickled, "is not a readable safetensors file")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(cached[0].read_bytes()[:100])
    _refused(cut, "is not a readable safetensors file")
    other = tmp_path / "weights.safetensors"
    save_file({"weight": torch.zeros(2)}, other)
    _refused(other, "is not a normal-map render cache")


def test_a_pt_cache_path_is_refused_before_rendering(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"must be a \.safetensors file"):
        NormalMapDataset(**TINY, cache=str(tmp_path / "normal_maps_32_4096.pt"))
    assert not list(tmp_path.iterdir())
