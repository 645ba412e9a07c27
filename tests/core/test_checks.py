"""Bad model numbers are refused in one line naming the setting and the value (issue 14.5)."""

from __future__ import annotations

import pytest

from core.checks import require_positive


def test_positive_numbers_and_lists_of_them_pass() -> None:
    require_positive("m", width=1, mlp_ratio=0.5, layers_per_block=[1, 2], channels=(8,))


@pytest.mark.parametrize(
    "values, message",
    [
        ({"width": -1}, "model.width must be a positive number, got -1"),
        ({"num_heads": 0}, "model.num_heads must be a positive number, got 0"),
        ({"mlp_ratio": float("nan")}, "model.mlp_ratio must be a positive number, got nan"),
        ({"width": True}, "model.width must be a positive number, got True"),
        ({"width": "64"}, "model.width must be a positive number, got '64'"),
        ({"layers_per_block": [2, 0]}, "non-empty list of positive numbers, got [2, 0]"),
        ({"layers_per_block": []}, "non-empty list of positive numbers, got []"),
    ],
)
def test_anything_else_is_one_line_naming_setting_and_value(values, message) -> None:
    with pytest.raises(ValueError) as info:
        require_positive("tarflow", **values)
    assert str(info.value).startswith("tarflow: ") and message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "factory, setting",
    [
        ("flows.image:TransformerFlow", {"width": -1}),
        ("flows.video.model:VideoTransformerFlow", {"num_heads": 0}),
        ("diffusion.models:NormalAlignedDiffusion", {"block_out_channels": [32, -1]}),
    ],
)
def test_models_refuse_bad_sizes_before_torch_sees_them(factory, setting) -> None:
    import importlib

    module, name = factory.split(":")
    model_class = getattr(importlib.import_module(module), name)
    key = next(iter(setting))
    with pytest.raises(ValueError, match=f"model.{key} must be"):
        model_class(**setting)


def test_require_device_passes_the_cpu_and_refuses_missing_cuda(monkeypatch) -> None:
    import torch

    from core.checks import require_device

    require_device("cpu")
    require_device(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1", torch.device("cuda", 0)):
        with pytest.raises(ValueError, match=r"^--device cuda(:\d)? asked for, but torch sees no "
                                             r"CUDA device .*; use --device cpu$"):
            require_device(device)
