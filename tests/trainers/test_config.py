"""Typed configs and registries: overrides, types, nearest-key hints, lazy built-ins."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from core import registry
from core.registry import get_model, register_dataset, register_model
from tests.core.helpers import sandbox_registry
from trainers.config import config_from_dict, load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"


def test_overrides_are_typed_yaml_values():
    parsed = dict((".".join(k), v) for k, v in parse_overrides(
        ["optimizer.lr=3e-4", "trainer.max_steps=100", "trainer.output_dir=runs/x",
         "trainer.resume=latest", "trainer.ema_decay=null", "trainer.nap=true"]))
    assert parsed == {"optimizer.lr": 3e-4, "trainer.max_steps": 100,
                      "trainer.output_dir": "runs/x", "trainer.resume": "latest",
                      "trainer.ema_decay": None, "trainer.nap": True}


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(SMOKE, ["optimizer.name=normuon", "trainer.checkpoint_every=50",
                              "model.hidden=7", "data.num_samples=64"])
    assert cfg.optimizer.name == "normuon" and cfg.trainer.checkpoint_every == 50
    assert cfg.model.kwargs["hidden"] == 7 and cfg.data.kwargs == {"num_samples": 64}
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg
    assert yaml.safe_load(cfg.to_yaml())["model"] == {"name": "smoke_mlp", **cfg.model.kwargs}


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.max_step=5", "config key 'trainer.max_step' (value 5) is unknown; "
                               "did you mean 'trainer.max_steps'?"),
        ("optimzer.lr=1", "did you mean 'optimizer'"),
        ("optimizer.lr=fast", "'optimizer.lr': value 'fast' is not of type float"),
        ("trainer.nap=1", "'trainer.nap': value 1 is not of type bool"),
        ("model.depth=2.5", "'model.depth': value 2.5 is not of type int"),
        ("trainer.mixed_precision=fp8", "choose one of: no, fp16, bf16"),
        ("trainer.ema_decay=1.5", "not in [0, 1)"),
        ("data.batch_size=0", "must be >= 1"),
        ("lr=3", "must be section.key"),
    ],
)
def test_bad_keys_and_values_name_key_value_and_nearest(override, message):
    with pytest.raises(ValueError) as info:
        load_config(SMOKE, [override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_missing_file_and_missing_sections(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ValueError, match="'model.name' is missing"):
        config_from_dict({"data": {"name": "smoke", "batch_size": 2}})
    with pytest.raises(ValueError, match="'data.batch_size' is missing"):
        config_from_dict({"model": {"name": "smoke_mlp"}, "data": {"name": "smoke"}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad)


def test_builtin_names_are_lazy_and_registration_works(monkeypatch):
    assert {"tarflow", "video_tarflow", "normal_adapted", "normal_aligned", "smoke_mlp"} <= set(
        registry.available_models())
    assert {"digits", "lfw_faces", "image_folder", "moving_digits", "bouncing_shapes",
            "normal_maps", "smoke"} <= set(registry.available_datasets())
    # resolving a built-in imports its module only then
    monkeypatch.delitem(sys.modules, "trainers.smoke", raising=False)
    sandbox_registry(monkeypatch)
    assert get_model("smoke_mlp").__name__ == "SmokeMLP"
    assert "trainers.smoke" in sys.modules

    @register_model("tiny_test_model")
    class Tiny:
        def __init__(self, width: int = 3, name_of_norm: str = "layernorm") -> None:
            self.width = width

    assert get_model("tiny_test_model") is Tiny
    cfg = config_from_dict({"model": {"name": "tiny_test_model", "width": 5},
                            "data": {"name": "smoke", "batch_size": 2}})
    assert cfg.model.kwargs == {"width": 5}
    with pytest.raises(ValueError, match="did you mean 'model.width'"):
        config_from_dict({"model": {"name": "tiny_test_model", "widht": 5},
                          "data": {"name": "smoke", "batch_size": 2}})
    with pytest.raises(ValueError, match="registered twice"):
        register_model("tiny_test_model")(type("Other", (), {}))

    @register_dataset("tiny_test_data")
    def tiny_data(n: int) -> list:
        return list(range(n))

    with pytest.raises(ValueError, match="misses required key"):
        config_from_dict({"model": {"name": "tiny_test_model"},
                          "data": {"name": "tiny_test_data", "batch_size": 2}})


def test_renamed_knobs_are_refused_with_the_new_name():
    digits = ROOT / "configs" / "digits_tarflow.yaml"
    with pytest.raises(ValueError) as info:
        load_config(digits, ["model.label_dropout=0.2"])
    assert str(info.value) == ("config key 'model.label_dropout' was renamed to "
                               "'model.condition_dropout'; use the new name (kind 'tarflow')")
    with pytest.raises(ValueError, match="'model.placement' was renamed to 'model.norm_placement'"):
        config_from_dict({"model": {"name": "video_tarflow", "placement": "pre"},
                          "data": {"name": "moving_digits", "batch_size": 2}}, check_model=False)


def test_launch_configs_parse_and_name_real_classes():
    import glob
    import subprocess

    from accelerate.commands.config.config_args import load_config_from_file

    import norms.transformer

    loaded = {Path(path).name: load_config_from_file(path)
              for path in sorted(glob.glob(str(ROOT / "configs" / "accelerate" / "*.yaml")))}
    kinds = {str(c.distributed_type).split(".")[-1] for c in loaded.values()}
    assert kinds == {"MULTI_GPU", "FSDP"}
    assert any(c.num_machines == 2 for c in loaded.values())
    fsdp = loaded["fsdp2.yaml"].fsdp_config
    assert fsdp["fsdp_version"] == 2
    assert hasattr(norms.transformer, fsdp["fsdp_transformer_layer_cls_to_wrap"])
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "slurm_train.sh")]).returncode == 0
