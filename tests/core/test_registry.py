"""core.registry: every declared string resolves, lookups are lazy, errors name the nearest."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core import registry
from core.registry import ModelKind, ShippedModel
from tests.core.helpers import sandbox_registry

ROOT = Path(__file__).resolve().parents[2]
BUILT_IN = {"tarflow", "video_tarflow", "normal_adapted", "normal_aligned", "smoke_mlp"}


def test_every_declared_string_resolves() -> None:
    kinds = registry.kinds()
    assert BUILT_IN <= set(kinds)
    for name, kind in kinds.items():
        model = registry.get_model(name)
        assert inspect.isclass(model) and hasattr(model, "from_pretrained"), name
        parameters = registry.constructor_parameters(model)
        for old, new in kind.renamed.items():  # the new name is a knob, the old one is not
            assert new in parameters and old not in parameters, (name, old, new)
        for dataset in kind.datasets:
            assert callable(registry.get_dataset(dataset)), dataset
        if kind.sampler is not None:
            sampler = registry.get_sampler(name)
            assert list(inspect.signature(sampler).parameters) == ["checkpoint", "config",
                                                                   "options"], name
    assert {"digits", "moving_digits", "normal_maps", "smoke"} <= set(registry.available_datasets())


def test_declared_shipped_models_live_in_their_package() -> None:
    shipped = registry.shipped_models()
    assert {"digits_tarflow", "moving_digits_video", "normal_adapted", "normal_aligned"} <= set(
        shipped)
    for name, (kind, declaration) in shipped.items():
        package = declaration.folder.split(":")[0]
        folder = registry.shipped_folder(name)
        assert folder.is_relative_to(ROOT / package) and "\n" not in declaration.description
        if (folder / "config.yaml").is_file():  # the ones trained so far
            config = yaml.safe_load((folder / "config.yaml").read_text())
            assert config["model"]["name"] == kind.name, name
    assert (registry.shipped_folder("digits_tarflow") / "config.yaml").is_file()


def test_questions_import_nothing_heavy() -> None:
    code = (
        "import sys; from core import registry; "
        "registry.kinds(); registry.shipped_models(); registry.shipped_folder('digits_tarflow'); "
        "registry.get_kind('tarflow'); registry.refuse_renamed('tarflow', ['width']); "
        "heavy = {'torch', 'diffusers', 'flows.image', 'trainers.smoke'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_unknown_names_and_missing_samplers_are_one_line() -> None:
    with pytest.raises(ValueError, match="model 'tarflw' is unknown .did you mean 'tarflow'"):
        registry.get_model("tarflw")
    with pytest.raises(ValueError, match="dataset 'digit' is unknown .did you mean 'digits'"):
        registry.get_dataset("digit")
    with pytest.raises(ValueError, match="'smoke_mlp' has no sampler; sample.py samples: .*tar"):
        registry.get_sampler("smoke_mlp")
    with pytest.raises(ValueError, match="shipped model 'digits' is unknown"):
        registry.shipped_folder("digits")


def test_renamed_knobs_are_refused_with_the_new_name() -> None:
    registry.refuse_renamed("tarflow", ["width", "condition_dropout"])  # current names pass
    with pytest.raises(ValueError) as info:
        registry.refuse_renamed("tarflow", ["width", "label_dropout"], source="run/config.yaml")
    message = str(info.value)
    assert "'model.label_dropout' in 'run/config.yaml' was renamed to 'model.condition_dropout'" \
        in message and "\n" not in message
    with pytest.raises(ValueError, match="'placement' was renamed to 'norm_placement'"):
        registry.refuse_renamed("video_tarflow", {"placement": "pre"}, prefix="")


def test_user_kinds_register_and_conflicts_are_refused(monkeypatch) -> None:
    sandbox_registry(monkeypatch)

    class Tiny:
        def __init__(self, width: int = 3) -> None:
            self.width = width

    def tiny_sampler(checkpoint, config, options):
        return {}

    registry.register(ModelKind("tiny_kind", model=Tiny, datasets={"tiny_data": list},
                                sampler=tiny_sampler, renamed={"dim": "width"}))
    assert registry.get_model("tiny_kind") is Tiny
    assert registry.get_dataset("tiny_data") is list
    assert registry.get_sampler("tiny_kind") is tiny_sampler
    registry.register_model("tiny_kind")(Tiny)  # the same class again (a re-import) is fine
    with pytest.raises(ValueError, match="'tiny_kind' is registered twice"):
        registry.register_model("tiny_kind")(type("Other", (), {}))
    with pytest.raises(ValueError, match="dataset 'digits' is registered twice"):
        registry.register(ModelKind("other_kind", model=Tiny, datasets={"digits": dict}))
    with pytest.raises(ValueError, match="'digits_tarflow' is declared by kinds 'tarflow' and"):
        registry.register(ModelKind("third_kind", model=Tiny, shipped={
            "digits_tarflow": ShippedModel("flows:elsewhere", "a clash")}))
    with pytest.raises(ValueError, match="dataset 'smoke' is registered twice"):
        registry.register_dataset("smoke")(dict)
    assert "tiny_kind" in registry.available_models()


def test_references_that_cannot_resolve_say_where(monkeypatch) -> None:
    sandbox_registry(monkeypatch)
    registry.register(ModelKind("ghost", model="no_such_package_xyz:Ghost",
                                sampler="flows.image:no_such_function"))
    with pytest.raises(ValueError, match="'no_such_package_xyz:Ghost', which cannot be imported"):
        registry.get_model("ghost")
    with pytest.raises(ValueError, match="'flows.image' has no attribute 'no_such_function'"):
        registry.get_sampler("ghost")


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(name="", model="a:b"), "needs a name"),
        (dict(name="k", model="flows.image.TransformerFlow"), "must read 'module:attribute'"),
        (dict(name="k", model="a:b", datasets={"d": "a:b:c"}), "dataset 'd' of kind 'k'"),
        (dict(name="k", model="a:b", renamed={"width": "width"}), "renames 'width' to itself"),
        (dict(name="k", model=3), "must be a 'module:attribute' string or a callable"),
    ],
)
def test_bad_declarations_fail_when_written(arguments, message) -> None:
    with pytest.raises(ValueError, match=message):
        ModelKind(**arguments)


def test_bad_shipped_declarations_fail_when_written() -> None:
    with pytest.raises(ValueError, match="'flows/pretrained/x' must read 'package:path'"):
        ShippedModel("flows/pretrained/x", "a model")
    with pytest.raises(ValueError, match="must be one line"):
        ShippedModel("flows:pretrained/x", "a model\ntrained long")


def test_declarations_are_read_only() -> None:
    kind = registry.get_kind("tarflow")
    with pytest.raises(TypeError):
        kind.datasets["mine"] = "a:b"  # type: ignore[index]
    with pytest.raises(AttributeError):
        kind.sampler = None  # type: ignore[misc]


def test_environment_variable_adds_a_users_declaring_module(tmp_path) -> None:
    (tmp_path / "my_kinds.py").write_text(
        "from core.registry import ModelKind\n"
        "KINDS = (ModelKind('my_kind', model='my_kinds:Model', datasets={'my_data': 'a:b'}),)\n"
        "class Model:\n    pass\n"
    )
    code = "from core import registry; print(registry.get_model('my_kind').__name__)"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}", "NORMKIT_KINDS": "my_kinds"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "Model", result.stderr
    env["NORMKIT_KINDS"] = "not_a_module_xyz"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "NORMKIT_KINDS names 'not_a_module_xyz', which cannot be imported" in result.stderr
