"""bf16 autocast, activation checkpointing and torch.compile: each trains like the plain run
(tolerances suited to each), checkpointing measurably holds less activation memory, and compile
falls back to eager with one warning line where it cannot run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.memory import peak_memory
from tests.trainers.helpers import SMOKE, SMOKE_TRANSFORMER
from trainers import load_config
from trainers.smoke import SmokeMLP, SmokeTransformer
from trainers.speedups import compile_unavailable, enable_activation_checkpointing
from trainers.train import train

QUIET = ["trainer.progress=false", "trainer.plot=false", "trainer.sample_every=0",
         "trainer.max_steps=3", "trainer.checkpoint_every=0"]


def run(tmp_path: Path, name: str, *overrides: str, config: Path = SMOKE_TRANSFORMER
        ) -> list[float]:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # several runs in one test
    config = load_config(config, [f"trainer.output_dir={tmp_path / name}", *QUIET, *overrides])
    train(config)
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def test_bf16_autocast_trains_close_to_fp32_but_not_equal(tmp_path, capsys):
    plain = run(tmp_path, "fp32")
    bf16 = run(tmp_path, "bf16", "trainer.mixed_precision=bf16")
    assert "precision bf16 autocast, fp32 weights" in capsys.readouterr().out
    assert bf16 != plain  # autocast really ran in bf16 (8 mantissa bits)
    torch.testing.assert_close(bf16, plain, rtol=3e-2, atol=1e-2)


def test_activation_checkpointing_same_losses(tmp_path, capsys):
    plain = run(tmp_path, "plain", "model.dropout=0.1")
    checkpointed = run(tmp_path, "ac", "model.dropout=0.1", "trainer.activation_checkpointing=true")
    assert "activation checkpointing on (2 TransformerBlock)" in capsys.readouterr().out
    # recomputation replays the same dropout masks (RNG state kept): the same numbers
    torch.testing.assert_close(checkpointed, plain, rtol=1e-6, atol=1e-7)


def _step_peak(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> int:
    def step() -> None:
        model.loss(batch)["loss"].backward()

    return peak_memory(step, torch.device("cpu"))


def test_activation_checkpointing_measurably_lowers_peak_memory():
    torch.manual_seed(0)
    model = SmokeTransformer(dim=256, token_dim=2, width=64, depth=6, num_heads=4, noise_std=0.0)
    batch = {"x": torch.randn(16, 256), "y": torch.randn(16, 256)}
    _step_peak(model, batch)  # warm-up: lazily built kernels and caches
    model.zero_grad(set_to_none=True)
    plain = _step_peak(model, batch)
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    assert enable_activation_checkpointing(model) == "6 TransformerBlock"
    checkpointed = _step_peak(model, batch)
    # 6 blocks of 16 x 128 tokens x 64 wide keep ~40 MB of activations; checkpointed, each
    # block keeps its input and one block's worth is alive at a time in the backward pass
    print(f"peak memory of a step: {plain} bytes plain, {checkpointed} checkpointed")
    assert checkpointed < 0.5 * plain, (checkpointed, plain)
    for grad, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, grad, rtol=1e-5, atol=1e-7)


def test_activation_checkpointing_uses_diffusers_own_and_refuses_models_without_blocks():
    from diffusers import UNet2DModel

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = UNet2DModel(sample_size=8, block_out_channels=(8, 16),
                                    down_block_types=("DownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "UpBlock2D"),
                                    layers_per_block=1, norm_num_groups=4)

    wrapper = Wrapper()
    assert enable_activation_checkpointing(wrapper) == \
        "UNet2DModel (diffusers gradient checkpointing)"
    assert wrapper.unet.is_gradient_checkpointing
    with pytest.raises(ValueError, match="SmokeMLP has no norms.transformer.TransformerBlock"):
        enable_activation_checkpointing(SmokeMLP())


def test_compile_trains_like_eager(tmp_path, capsys):
    if compile_unavailable(torch.device("cpu")):
        pytest.skip("no C++ compiler for inductor on this machine")
    # The MLP compiles in a fraction of the transformer's time (the slow tests compile that);
    # no input noise: inductor draws its random numbers with its own generator.
    plain = ["model.noise_std=0.0"]
    eager = run(tmp_path, "eager", *plain, config=SMOKE)
    compiled = run(tmp_path, "compiled", *plain, "trainer.compile=true", config=SMOKE)
    assert "compile on (torch.compile, inductor)" in capsys.readouterr().out
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


def test_compile_without_a_compiler_warns_once_and_runs_eager(tmp_path, capsys, monkeypatch):
    from torch._inductor import config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, "/nonexistent/g++"))
    reason = compile_unavailable(torch.device("cpu"))
    assert reason == "inductor finds no C++ compiler (InvalidCxxCompiler)"
    eager = run(tmp_path, "eager")
    fallback = run(tmp_path, "fallback", "trainer.compile=true")
    out = capsys.readouterr().out
    assert out.count(f"warning: trainer.compile=true but {reason}: running eager\n") == 1
    assert f"compile off ({reason})" in out
    assert fallback == eager
