"""core.checkpoint: folders, run folders and shipped names load; damaged ones fail in one line."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from core.checkpoint import (
    find_checkpoints,
    installed_shipped_models,
    latest_checkpoint,
    load_model,
    read_config,
    resolve_checkpoint,
    resolve_source,
    weights_folder,
)
from core.registry import ModelKind, ShippedModel, register, shipped_folder
from tests.core.helpers import TINY_FLOW, sandbox_registry, write_tiny_flow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder: checkpoint-3 and checkpoint-12 (model/ + ema/), a half-written one."""
    run = tmp_path_factory.mktemp("run")
    write_tiny_flow(run / "checkpoint-3", seed=1)
    write_tiny_flow(run / "checkpoint-12", ema=True)
    (run / "checkpoint-20").mkdir()  # no config.yaml: not complete
    (run / "checkpoint-12" / "trainer_state.json").write_text("{}")
    return run


def _single_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def test_run_folders_resolve_to_the_newest_complete_checkpoint(run) -> None:
    assert [step for step, _ in find_checkpoints(run, require_trainer_state=False)] == [3, 12]
    assert [step for step, _ in find_checkpoints(run)] == [12]  # resumable: with trainer state
    assert latest_checkpoint(run) == run / "checkpoint-12"
    assert resolve_checkpoint(run / "checkpoint-3", require_trainer_state=False) == (
        run / "checkpoint-3")
    assert resolve_source(run) == run / "checkpoint-12"
    assert resolve_source(str(run / "checkpoint-3")) == run / "checkpoint-3"


def test_ema_weights_by_default_raw_on_request(run) -> None:
    folder = run / "checkpoint-12"
    assert weights_folder(folder) == folder / "ema"
    assert weights_folder(folder, use_ema=False) == folder / "model"
    assert weights_folder(run / "checkpoint-3") == run / "checkpoint-3" / "model"
    ema, config = load_model(run)
    raw, _ = load_model(run, use_ema=False)
    assert config["model"]["name"] == "tarflow" and not ema.training
    assert type(ema).__name__ == "TransformerFlow" and ema.config.width == TINY_FLOW["width"]
    pairs = list(zip(ema.parameters(), raw.parameters()))
    torch.testing.assert_close(pairs[0][0], 0.5 * pairs[0][1])  # helpers halve the EMA copy


def test_shipped_names_resolve_and_paths_win(tmp_path, monkeypatch) -> None:
    assert resolve_source("digits_tarflow") == shipped_folder("digits_tarflow")
    model, config = load_model("digits_tarflow")
    assert config["model"]["name"] == "tarflow" and model.config.num_classes == 10
    own = write_tiny_flow(tmp_path / "digits_tarflow")  # a local folder of the same name
    monkeypatch.chdir(tmp_path)
    assert resolve_source("digits_tarflow").resolve() == own.resolve()


def test_missing_and_unknown_sources_are_one_line(tmp_path, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError) as info:
        resolve_source(tmp_path / "nowhere")
    message = _single_line(info)
    assert "does not exist and is not a shipped model name (shipped: " in message
    assert "digits_tarflow" in message
    with pytest.raises(FileNotFoundError, match="did you mean 'digits_tarflow'"):
        resolve_source("digits_tarfow")
    with pytest.raises(FileNotFoundError, match="neither a checkpoint folder nor a run"):
        resolve_source(tmp_path)
    sandbox_registry(monkeypatch)
    register(ModelKind("ghost_kind", model="flows.image:TransformerFlow", shipped={
        "ghost_model": ShippedModel("flows:pretrained/ghost_model", "not trained yet")}))
    with pytest.raises(FileNotFoundError, match="shipped model 'ghost_model' is declared but not "
                                                "in this installation"):
        resolve_source("ghost_model")
    assert "ghost_model" not in installed_shipped_models()
    assert installed_shipped_models()["digits_tarflow"] == shipped_folder("digits_tarflow")


def _copy(run, tmp_path, name: str):
    folder = tmp_path / name
    shutil.copytree(run / "checkpoint-3", folder)
    return folder


def _edit_yaml(folder, change) -> None:
    config = yaml.safe_load((folder / "config.yaml").read_text())
    change(config)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))


def _edit_json(path, change) -> None:
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def test_kind_that_does_not_match_the_weights_is_one_line(run, tmp_path) -> None:
    folder = _copy(run, tmp_path, "video_named")
    _edit_yaml(folder, lambda c: c["model"].update(name="video_tarflow"))
    with pytest.raises(ValueError) as info:  # was a meta-tensor NotImplementedError
        load_model(folder)
    assert "names kind 'video_tarflow' (VideoTransformerFlow)" in _single_line(info)
    assert "holds a TransformerFlow" in str(info.value)
    with pytest.raises(ValueError, match="holds a 'tarflow' model, not 'normal_adapted'"):
        load_model(run, kind="normal_adapted")


def test_weights_that_do_not_match_their_config_are_one_line(run, tmp_path) -> None:
    folder = _copy(run, tmp_path, "wider")
    _edit_json(folder / "model" / "config.json", lambda c: c.update(width=32))
    with pytest.raises(ValueError) as info:
        load_model(folder)
    assert "cannot load the weights in" in _single_line(info)
    truncated = _copy(run, tmp_path, "truncated")
    weights = truncated / "model" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError) as info:
        load_model(truncated)
    assert "cannot load the weights in" in _single_line(info)


def test_damaged_configs_are_one_line(run, tmp_path) -> None:
    cases = {
        "garbled": lambda f: (f / "config.yaml").write_text("model: [unclosed"),
        "no_model": lambda f: (f / "config.yaml").write_text("data: {}"),
        "no_name": lambda f: _edit_yaml(f, lambda c: c["model"].pop("name")),
        "unknown": lambda f: _edit_yaml(f, lambda c: c["model"].update(name="tarflw")),
        "bad_json": lambda f: (f / "model" / "config.json").write_text("{"),
        "no_weights": lambda f: shutil.rmtree(f / "model"),
    }
    expected = {
        "garbled": "cannot read", "no_model": "has no 'model' section",
        "no_name": "has no model.name", "unknown": "did you mean 'tarflow'",
        "bad_json": "cannot read", "no_weights": "has no model weights folder",
    }  # fmt: skip
    for name, damage in cases.items():
        folder = _copy(run, tmp_path, name)
        damage(folder)
        with pytest.raises((ValueError, FileNotFoundError)) as info:
            load_model(folder)
        assert expected[name] in _single_line(info), name


def test_renamed_knobs_of_old_checkpoints_are_refused(run, tmp_path) -> None:
    old_yaml = _copy(run, tmp_path, "old_yaml")
    _edit_yaml(old_yaml, lambda c: c["model"].update(label_dropout=c["model"].pop("num_classes")))
    with pytest.raises(ValueError) as info:
        read_config(old_yaml)
    assert "'model.label_dropout'" in _single_line(info)
    assert "was renamed to 'model.condition_dropout'" in str(info.value)
    old_json = _copy(run, tmp_path, "old_json")
    _edit_json(old_json / "model" / "config.json",
               lambda c: c.update(placement=c.pop("norm_placement")))
    with pytest.raises(ValueError, match="'placement' in .*config.json' was renamed to "
                                         "'norm_placement'"):
        load_model(old_json)


class _Payload:
    """Unpickling this creates the marker file: proof that a pickle was executed."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("part", ["model", "ema"])
def test_a_planted_pickle_in_the_weights_is_never_opened(tmp_path, part) -> None:
    import pickle

    from diffusion.norm_swap import load_swapped
    from flows.image import TransformerFlow

    marker = tmp_path / "PWNED"
    folder = write_tiny_flow(tmp_path / "checkpoint", ema=True)
    (folder / part / "diffusion_pytorch_model.safetensors").unlink()
    (folder / part / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(ValueError, match="cannot load the weights"):
        load_model(folder, use_ema=part == "ema")
    with pytest.raises(FileNotFoundError, match="no diffusion_pytorch_model.safetensors"):
        load_swapped(TransformerFlow, folder / part)
    assert not marker.exists()
