"""FSDP2 on two CPU ranks (gloo): parameters sharded per TransformerBlock, the same training as
DDP, sharded checkpoints that resume exactly, whole-weight exports that sample.py loads, every
optimizer's sharded update equal to its whole one, and the launch's FSDP request read right."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.trainers.helpers import SMOKE_TRANSFORMER, run_ranks
from trainers.sharding import FsdpRequest, fsdp_request

FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
COMMON = ["trainer.progress=false", "trainer.plot=false", "trainer.sample_every=0",
          "data.batch_size=8", "trainer.max_steps=4", "trainer.checkpoint_every=2"]
DIGITS = SMOKE_TRANSFORMER.parent / "digits_tarflow.yaml"
TINY_TARFLOW = ["model.image_size=8", "model.patch_size=2", "model.width=16", "model.num_heads=2",
                "model.layers_per_block=[1, 1]", "data.size=8", "data.batch_size=4",
                "trainer.max_steps=2"]


def _train(folder: str, *overrides: str, fsdp: bool, config: Path = SMOKE_TRANSFORMER):
    from accelerate.state import AcceleratorState

    from trainers import load_config
    from trainers.train import train

    AcceleratorState._reset_state(reset_partial_state=True)  # several runs in one process
    for key, value in FSDP_ENV.items():
        if fsdp:
            os.environ[key] = value
        else:
            os.environ.pop(key, None)
    return train(load_config(config, [f"trainer.output_dir={folder}", *COMMON, *overrides]))


def _check_layout(model: torch.nn.Module) -> None:
    """Every parameter a DTensor sharded on dim 0 over the two ranks; blocks are FSDP units."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor, Shard

    from norms.transformer import TransformerBlock

    blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
    assert len(blocks) == 2 and all(isinstance(b, FSDPModule) for b in blocks)
    for name, param in model.named_parameters():
        assert isinstance(param, DTensor), name
        assert param.placements == (Shard(0),) and param.device_mesh.size() == 2, name
        local = torch.tensor(param.to_local().numel())
        torch.distributed.all_reduce(local)
        assert int(local) == param.numel(), name  # the two shards make up the parameter


def _fsdp_worker(out: str) -> None:
    from accelerate import PartialState

    from trainers import sharding

    seen = []
    original = sharding.shard_model

    def spy(root, model, request, device):
        layout = original(root, model, request, device)
        seen.append(model)
        return layout

    sharding.shard_model = spy
    _train(f"{out}/ddp", fsdp=False)
    _train(f"{out}/fsdp", fsdp=True)
    _check_layout(seen[0])
    state = PartialState()
    if state.is_main_process:
        shutil.copytree(f"{out}/fsdp/checkpoint-2", f"{out}/resumed/checkpoint-2")
    state.wait_for_everyone()
    _train(f"{out}/resumed", "trainer.resume=latest", fsdp=True)
    _train(f"{out}/tarflow", *TINY_TARFLOW, fsdp=True, config=DIGITS)
    _check_sharded_optimizers()


def _check_sharded_optimizers() -> None:
    """Each optimizer, two steps: the sharded model ends where the whole one does (float64)."""
    from trainers.config import OptimizerConfig
    from trainers.optim import OPTIMIZERS, build_optimizer
    from trainers.sharding import shard_model, whole
    from trainers.smoke import SmokeTransformer
    from trainers.train import LossModule

    rank = torch.distributed.get_rank()
    torch.set_default_dtype(torch.float64)
    try:
        for name in OPTIMIZERS:
            torch.manual_seed(0)
            plain = SmokeTransformer(noise_std=0.0)
            sharded = copy.deepcopy(plain)
            root = LossModule(sharded)
            shard_model(root, sharded, FsdpRequest(), torch.device("cpu"))
            settings = OptimizerConfig(name=name, lr=0.02, weight_decay=0.1)
            optimizers = [build_optimizer(m, settings) for m in (plain, sharded)]
            # Conda's second step rotates into an SVD basis that is arbitrary where the first
            # moment's trailing singular values are zero (they are here): one step only.
            for _ in range(1 if name == "conda" else 2):
                batch = {"x": torch.randn(8, 8), "y": torch.randn(8, 8)}  # same on both ranks
                half = {k: v[4 * rank: 4 * rank + 4] for k, v in batch.items()}
                plain.loss(batch)["loss"].backward()
                root(half)["loss"].backward()  # FSDP averages the two halves' gradients
                for optimizer in optimizers:
                    optimizer.step()
                    optimizer.zero_grad()
            for (key, p), q in zip(plain.named_parameters(), sharded.parameters()):
                torch.testing.assert_close(whole(q.detach()), p.detach(), rtol=1e-9, atol=1e-11,
                                           msg=lambda m, n=name, k=key: f"{n} {k}: {m}")
    finally:
        torch.set_default_dtype(torch.float32)


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


def test_fsdp2_on_two_cpu_ranks_trains_like_ddp_resumes_exactly_and_exports(tmp_path):
    result = run_ranks("tests.trainers.test_sharding:_fsdp_worker", str(tmp_path))
    assert result.returncode == 0, result.stderr[-4000:]
    assert ("scale: FSDP2 over 2 ranks (2 TransformerBlock unit(s) + root, parameters sharded on "
            "dim 0); precision fp32; activation checkpointing off; compile off") in result.stdout
    ddp, fsdp, resumed = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "resumed"
    # the same per-rank noise and data as DDP: the same losses and weights up to float order
    torch.testing.assert_close(_losses(fsdp), _losses(ddp), rtol=1e-5, atol=1e-6)
    for part in ("model", "ema"):
        # atol: the attention key bias has a zero gradient (softmax ignores it), so AdamW turns
        # float noise into steps of up to lr there; a wrong shard would be off by O(0.1)
        torch.testing.assert_close(_weights(fsdp / "checkpoint-4" / part),
                                   _weights(ddp / "checkpoint-4" / part), rtol=0, atol=2e-3)
    # each rank wrote its own shard of the optimizer state, and nothing whole
    folder = fsdp / "checkpoint-4"
    assert not (folder / "training_state.json").exists()
    shards = [load_file(str(folder / f"training_state-rank{r}.safetensors")) for r in (0, 1)]
    moment = next(k for k in shards[0] if k.endswith("exp_avg"))
    assert not torch.equal(shards[0][moment], shards[1][moment])
    assert '{"shard": ' in (folder / "training_state-rank0.json").read_text()
    # resumed at step 2 == uninterrupted, bit for bit (weights, EMA, losses)
    assert _losses(resumed) == _losses(fsdp)[2:]
    for part in ("model", "ema"):
        whole, again = _weights(folder / part), _weights(resumed / "checkpoint-4" / part)
        assert all(torch.equal(whole[k], again[k]) for k in whole)
    # the exported folders are plain diffusers models: sample.py samples the FSDP-trained flow
    import sample

    out = tmp_path / "samples.png"
    code = sample.main(["--checkpoint", str(tmp_path / "tarflow"), "--num", "4",
                        "--out", str(out), "--no-progress", "--method", "sequential"])
    assert code == 0 and out.stat().st_size > 0


def test_fsdp_request_comes_from_the_launch_and_refuses_what_it_cannot_do(
    tmp_path, monkeypatch, capsys
):
    assert fsdp_request({}) is None
    assert fsdp_request(FSDP_ENV) == FsdpRequest(("TransformerBlock",), True, False)
    assert fsdp_request({**FSDP_ENV, "FSDP_TRANSFORMER_CLS_TO_WRAP": "Block, Layer",
                         "FSDP_RESHARD_AFTER_FORWARD": "false",
                         "FSDP_ACTIVATION_CHECKPOINTING": "true"}) == \
        FsdpRequest(("Block", "Layer"), False, True)
    with pytest.raises(ValueError, match="FSDP version 1 .* set fsdp_version: 2"):
        fsdp_request({"ACCELERATE_USE_FSDP": "true"})
    with pytest.raises(ValueError, match="offloading"):
        fsdp_request({**FSDP_ENV, "FSDP_OFFLOAD_PARAMS": "true"})
    # what FSDP2 cannot run is refused before anything is written (one line, exit 2)
    from tests.trainers.helpers import run_cli

    for key, value in FSDP_ENV.items():
        monkeypatch.setenv(key, value)
    for override, message in (("trainer.mixed_precision=fp16", "fp16 does not run under FSDP2"),
                              ("trainer.nap=true", "nap=true does not run under FSDP2")):
        assert run_cli(tmp_path / "run", override) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
        assert not (tmp_path / "run").exists()
