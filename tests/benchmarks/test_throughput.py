"""The throughput benchmark: FLOPs counted as the matmul formula says, MFU against the right
peak, a table of every variant from a real two-rank run (slow), one-line refusals."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "throughput.py"
_SPEC = importlib.util.spec_from_file_location("throughput", _PATH)
throughput = importlib.util.module_from_spec(_SPEC)
sys.modules["throughput"] = throughput  # its dataclass looks itself up there
_SPEC.loader.exec_module(throughput)


class Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(16, 32)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": self.layer(batch["x"]).square().mean()}


def test_model_flops_are_forward_plus_backward_matmuls():
    model = Linear()
    # forward 2 B I O; backward: the weight gradient 2 B I O, and the input's when it needs one
    assert throughput.count_model_flops(model, {"x": torch.randn(8, 16)}) == 4 * 8 * 16 * 32
    x = torch.randn(8, 16, requires_grad=True)
    assert throughput.count_model_flops(model, {"x": x}) == 6 * 8 * 16 * 32
    assert all(p.grad is None for p in model.parameters())


def test_mfu_uses_the_gpus_dense_peak_of_the_precision(monkeypatch):
    cuda = torch.device("cuda", 0)
    for name, bf16, peak in (("NVIDIA H200", True, 989.4e12), ("NVIDIA H100 PCIe", True, 756e12),
                             ("NVIDIA H100 80GB HBM3", False, 66.9e12),
                             ("NVIDIA A100-SXM4-80GB", True, 312e12)):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device, n=name: n)
        assert throughput.mfu(peak / 2, bf16, cuda) == pytest.approx(0.5)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA T4")
    assert throughput.mfu(1e12, True, cuda) is None
    assert throughput.mfu(1e12, True, torch.device("cpu")) is None


@pytest.mark.parametrize("argv, message", [
    (["--variants", "ddp", "nope"], "--variants nope unknown; choose from: ddp, ddp+bf16"),
    (["--steps", "0"], "--steps 0 must be >= 1"),
    (["--device", "cuda"], "--device cuda asked for, but torch sees no CUDA device"),
    (["--config", "configs/smoke.yaml"], "trains 'smoke_mlp'; this benchmark measures video"),
])
def test_bad_options_are_one_line_exit_2(argv, message, capsys):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert throughput.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


@pytest.mark.slow
def test_quick_two_rank_run_measures_every_variant(tmp_path):
    out = tmp_path / "results.json"
    variants = ["ddp", "fsdp2", "fsdp2+bf16+ac+compile"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(_PATH), "--quick", "--steps", "1", "--warmup", "1",
                           "--variants", *variants, "--json", str(out)], capture_output=True,
                          text=True, timeout=1800, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| variant | step (s) | tokens/s | peak memory rank 0 (MB) | achieved GFLOP/s" \
        in done.stdout
    results = json.loads(out.read_text())
    assert [r["variant"] for r in results["rows"]] == variants
    assert results["flops_per_step"] > 0
    for row in results["rows"]:
        assert row["step_s"] > 0 and row["peak_memory"] > 0 and row["mfu"] is None
        # 2 ranks x 4 videos x 4 frames x 16 tokens per frame
        assert row["tokens_per_s"] == pytest.approx(2 * 4 * 4 * 16 / row["step_s"])


def test_realistic_config_is_a_deep_shallow_video_flow_of_the_promised_size():
    from core.registry import get_model
    from norms.transformer import TransformerBlock
    from trainers.config import load_config

    config = load_config(_PATH.parents[1] / "configs" / "video_realistic.yaml", check_model=True)
    model = get_model(config.model.name)(**config.model.kwargs)
    assert model.config.frames == 16 and model.tokens_per_frame == 256
    deep = [m for m in model.global_block.modules() if isinstance(m, TransformerBlock)]
    shallow = [[m for m in b.modules() if isinstance(m, TransformerBlock)] for b in model.local]
    assert len(deep) >= 12 and config.model.kwargs["width"] >= 384
    assert shallow and all(0 < len(blocks) < len(deep) for blocks in shallow)
    assert 25e6 < sum(p.numel() for p in model.parameters()) < 32e6  # "about 28 M" (header)
