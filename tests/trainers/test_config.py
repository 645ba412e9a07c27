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
        ("trainer.ema_decay=1.5", "value 1.5 is out of range; allowed: 0 <= ema_decay < 1"),
        ("data.batch_size=0", "value 0 is out of range; allowed: batch_size >= 1"),
        ("lr=3", "must be section.key"),
    ],
)
def test_bad_keys_and_values_name_key_value_and_nearest(override, message):
    with pytest.raises(ValueError) as info:
        load_config(SMOKE, [override])
    assert message in str(info.value) and "\n" not in str(info.value)


# Every numeric option of the data/optimizer/trainer sections, just outside its range (and a
# value just inside, which must be accepted).
NUMERIC_LIMITS = [
    ("data.batch_size", "0", "1"), ("data.num_workers", "-1", "0"),
    ("optimizer.lr", "-1e-3", "0"), ("optimizer.lr", ".inf", "10"),
    ("optimizer.lr", ".nan", "1e-3"), ("optimizer.weight_decay", "-0.1", "0"),
    ("optimizer.beta1", "1.0", "0.0"), ("optimizer.beta2", "-0.5", "0.5"),
    ("optimizer.eps", "0", "1e-12"), ("optimizer.momentum", "1", "0.99"),
    ("optimizer.ns_steps", "0", "1"), ("optimizer.normuon_beta2", "1.5", "0.9"),
    ("optimizer.conda_update_period", "0", "1"), ("optimizer.delta", "-0.1", "0"),
    ("optimizer.wd_ratio", "1.1", "1"), ("optimizer.adamw_lr", "-1", "null"),
    ("trainer.max_steps", "0", "1"), ("trainer.seed", "-1", "4294967295"),
    ("trainer.seed", "4294967296", "0"), ("trainer.gradient_accumulation_steps", "0", "1"),
    ("trainer.max_grad_norm", "-1", "0"), ("trainer.max_grad_norm", ".nan", ".inf"),
    ("trainer.warmup_steps", "-3", "0"), ("trainer.min_lr_ratio", "5", "1"),
    ("trainer.min_lr_ratio", "-0.1", "0"), ("trainer.ema_decay", "1", "0"),
    ("trainer.log_every", "0", "1"), ("trainer.sample_every", "-1", "0"),
    ("trainer.num_samples", "0", "1"), ("trainer.checkpoint_every", "-1", "0"),
    ("trainer.keep_last", "0", "1"), ("trainer.max_nonfinite", "0", "1"),
    ("trainer.threads", "0", "1"),
]


@pytest.mark.parametrize("key, bad, good", NUMERIC_LIMITS)
def test_numeric_options_out_of_range_are_one_line_errors(key, bad, good):
    with pytest.raises(ValueError) as info:
        load_config(SMOKE, [f"{key}={bad}"])
    message = str(info.value)
    field = key.split(".")[1]
    assert message.startswith(f"config key '{key}': value ") and "\n" not in message
    assert ("is out of range" in message or "is not a finite number" in message)
    assert "allowed: " in message and field in message.split("allowed: ")[1]
    load_config(SMOKE, [f"{key}={good}"])


def test_every_numeric_option_is_bounded():
    import dataclasses

    from trainers.config import DataConfig, OptimizerConfig, TrainerConfig

    for section, cls in (("data", DataConfig), ("optimizer", OptimizerConfig),
                         ("trainer", TrainerConfig)):
        numeric = {f.name for f in dataclasses.fields(cls)
                   if any(t in str(f.type) for t in ("int", "float"))}
        bounded = {f.name for f in dataclasses.fields(cls) if "bounds" in f.metadata}
        assert numeric == bounded, section
        assert {f"{section}.{name}" for name in numeric} <= {key for key, _, _ in NUMERIC_LIMITS}


def test_overwrite_and_resume_contradict():
    with pytest.raises(ValueError, match="'trainer.overwrite' .* 'trainer.resume'"):
        load_config(SMOKE, ["trainer.overwrite=true", "trainer.resume=latest"])


def test_optimizer_names_are_listed_once():
    from trainers.optim import OPTIMIZERS

    with pytest.raises(ValueError) as info:
        load_config(SMOKE, ["optimizer.name=adamx"])
    assert info.value.args[0].endswith("choose one of: " + ", ".join(OPTIMIZERS))
    assert not hasattr(__import__("trainers.config").config, "OPTIMIZER_NAMES")


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
