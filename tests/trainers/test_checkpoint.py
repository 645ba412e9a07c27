"""Trainer checkpoints as an attacker or an accident leaves them: planted pickles, damaged files,
non-finite weights, other runs' checkpoints; plus exact resume of the model's auxiliary state."""

from __future__ import annotations

import json
import math
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.trainers.helpers import QUIET, SMOKE, run_cli
from trainers import checkpoint as ckpt
from trainers import load_config
from trainers.ema import EMA
from trainers.smoke import SmokeMLP
from trainers.train import NonFiniteLossError, TrainingStopped, train

STEPS = ["trainer.max_steps=4", "trainer.checkpoint_every=2", "trainer.keep_last=5"]
QUICK = [*QUIET, *STEPS]
RESUME = [*STEPS, "trainer.resume=latest", "trainer.max_steps=6"]




class Payload:
    """Unpickling this creates the marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_planted_pickles_never_run_on_resume(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(Payload(marker))
    origin = tmp_path / "origin"
    assert run_cli(origin, *STEPS) == 0
    folder = origin / "checkpoint-2"
    files = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    assert len(files) >= 9
    for index, name in enumerate(files):  # every file of the checkpoint replaced by a pickle
        run = tmp_path / f"planted-{index}"
        shutil.copytree(origin, run)
        (run / "checkpoint-4" / name).write_bytes(payload)
        shutil.rmtree(run / "checkpoint-2")
        code = run_cli(run, *RESUME)
        err = capsys.readouterr().err.strip()
        assert code in (0, 2), name
        if code == 2:  # refused: one line naming the file
            assert err.startswith("error: ") and "\n" not in err and name.name in err, err
        assert not marker.exists(), name
    # extra pickles where Accelerate and torch would look for them are ignored
    run = tmp_path / "extras"
    shutil.copytree(origin, run)
    extras = ["accelerator/custom_checkpoint_0.pkl", "accelerator/random_states_0.pkl",
              "accelerator/optimizer.bin", "accelerator/scheduler.bin", "optimizer.bin",
              "random_states_0.pkl", "model/diffusion_pytorch_model.bin", "ema/pytorch_model.bin",
              "scaler.pt", "sampler.bin"]
    for extra in extras:
        (run / "checkpoint-4" / extra).parent.mkdir(exist_ok=True)
        (run / "checkpoint-4" / extra).write_bytes(payload)
    assert run_cli(run, *RESUME) == 0
    assert not marker.exists()
    assert ckpt.latest_checkpoint(run).name == "checkpoint-6"


def test_damaged_resume_checkpoints_are_one_line_exit_2(tmp_path, capsys):
    origin = tmp_path / "origin"
    assert run_cli(origin, *STEPS) == 0
    capsys.readouterr()

    def truncate(path: Path) -> None:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    damages = {
        "truncated model": (lambda f: truncate(f / "model" / "diffusion_pytorch_model.safetensors"),
                            "diffusion_pytorch_model.safetensors"),
        "truncated optimizer state": (lambda f: truncate(f / "training_state.safetensors"),
                                      "training_state.safetensors"),
        "broken trainer state": (lambda f: (f / "trainer_state.json").write_text('{"step": 4,'),
                                 "trainer_state.json"),
        "trainer state of another shape": (
            lambda f: (f / "trainer_state.json").write_text('{"step": -4}'), "trainer_state.json"),
        "missing rng": (lambda f: (f / "rng-rank0.json").unlink(), "rng-rank0.json"),
        "broken rng": (lambda f: (f / "rng-rank0.json").write_text('{"torch": [1]}'),
                       "rng-rank0.json"),
        "missing model": (lambda f: shutil.rmtree(f / "model"), "model"),
        "missing optimizer state": (lambda f: (f / "training_state.json").unlink(),
                                    "training_state.json"),
        "old accelerate layout": (lambda f: [(f / "training_state.json").unlink(),
                                             (f / "accelerator").mkdir()], "pickle"),
    }
    for index, (label, (damage, expected)) in enumerate(damages.items()):
        run = tmp_path / f"damaged-{index}"
        shutil.copytree(origin, run)
        damage(run / "checkpoint-4")
        code = run_cli(run, *RESUME)
        err = capsys.readouterr().err.strip()
        assert code == 2, label
        assert err.startswith("error: ") and "\n" not in err and expected in err, (label, err)
        assert "checkpoint-4" in err, label
    changes = (("model.hidden=16", "do not fit this model"),
               ("optimizer.name=sgdp", "holds AdamW optimizer state; this run builds SGDP"))
    for change, expected in changes:
        run = tmp_path / change
        shutil.copytree(origin, run)
        assert run_cli(run, *RESUME, change) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and "\n" not in err and "checkpoint-4" in err, err


def test_user_errors_inside_train_are_one_line_and_bugs_keep_their_traceback(
    tmp_path, capsys, monkeypatch
):
    run = tmp_path / "small"
    assert run_cli(run, *STEPS, "data.num_samples=8") == 2  # batch 16 > 8 items, found in train()
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data.batch_size=16") and "8 items" in err and "\n" not in err
    assert "allowed: data.batch_size <= 8" in err and not run.exists()

    def broken_loss(self, batch):
        raise KeyError("a bug in a model")

    monkeypatch.setattr(SmokeMLP, "loss", broken_loss)
    with pytest.raises(KeyError, match="a bug in a model"):
        run_cli(tmp_path / "bug", *STEPS)
    assert not (tmp_path / "bug" / ".lock").exists()  # the lock goes with the failed run


def test_an_infinite_lr_is_refused_and_never_leaves_infinite_weights(tmp_path, capsys):
    assert run_cli(tmp_path / "cli", *STEPS, "optimizer.lr=.inf") == 2
    assert "not a finite number" in capsys.readouterr().err
    for every, stop in ((2, TrainingStopped), (0, NonFiniteLossError)):
        run = tmp_path / f"lib-{every}"
        config = load_config(SMOKE, [f"trainer.output_dir={run}", *QUICK,
                                     "trainer.max_steps=20", "trainer.max_nonfinite=2",
                                     f"trainer.checkpoint_every={every}"])
        config.optimizer.lr = math.inf  # past the config check, as a library caller could
        with pytest.raises(stop) as info:
            train(config)
        message = str(info.value)
        assert "weight values (model or EMA) are not finite" in message
        assert "no earlier checkpoint with finite weights" in message
        assert ckpt.find_checkpoints(run) == [] and not list(run.glob(".tmp-*"))


@pytest.mark.parametrize("where", ["model", "ema"])
def test_nonfinite_weights_are_never_checkpointed(tmp_path, monkeypatch, where):
    if where == "model":
        def poison(self):
            self.optimizer_steps += 1
            if self.optimizer_steps == 3:
                with torch.no_grad():
                    self.net[0].weight[0, 0] = math.inf
        monkeypatch.setattr(SmokeMLP, "after_optimizer_step", poison)
    else:
        update = EMA.update

        def poisoned_update(self, model):
            update(self, model)
            if self.num_updates == 3:
                with torch.no_grad():
                    next(self.model.parameters())[0, 0] = math.nan
        monkeypatch.setattr(EMA, "update", poisoned_update)
    config = load_config(SMOKE, [f"trainer.output_dir={tmp_path / 'run'}", *QUICK])
    with pytest.raises(TrainingStopped) as info:
        train(config)
    assert "last checkpoint with finite weights" in str(info.value)
    assert str(tmp_path / "run" / "checkpoint-2") in str(info.value)
    assert [s for s, _ in ckpt.find_checkpoints(tmp_path / "run")] == [2]
    assert not list((tmp_path / "run").glob(".tmp-*"))
    for part in ("model", "ema"):
        weights = load_file(str(tmp_path / "run" / "checkpoint-2" / part /
                                "diffusion_pytorch_model.safetensors"))
        assert all(torch.isfinite(t).all() for t in weights.values())


def test_pruning_deletes_only_checkpoints_of_the_current_run(tmp_path):
    run = tmp_path / "run"
    for step, run_id in ((1, "other"), (2, "mine"), (3, None), (4, "mine"), (5, "mine")):
        folder = run / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("model: {}\n")
        state = {"step": step} if run_id is None else {"step": step, "run_id": run_id}
        (folder / "trainer_state.json").write_text(json.dumps(state))
    ckpt.prune_checkpoints(run, keep_last=1, run_id="mine")
    assert [s for s, _ in ckpt.find_checkpoints(run)] == [1, 3, 5]


def test_auxiliary_state_is_checkpointed_and_resumes_exactly(tmp_path, monkeypatch):
    common = [*QUICK, "trainer.max_steps=8", "trainer.checkpoint_every=4", "model.aux_lr=0.2"]
    reference = train(load_config(SMOKE, [f"trainer.output_dir={tmp_path / 'ref'}", *common]))
    offset = load_file(str(reference.checkpoint / "model" / "diffusion_pytorch_model.safetensors"))
    assert offset["offset"].abs().min() > 0  # the auxiliary optimizer did move it
    saved = load_file(str(tmp_path / "ref" / "checkpoint-4" / "training_state.safetensors"))
    assert any(k.startswith("auxiliary/state/0/momentum_buffer") for k in saved)

    def resume(name: str) -> list[float]:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
        run = tmp_path / name
        run.mkdir()
        shutil.copytree(tmp_path / "ref" / "checkpoint-4", run / "checkpoint-4")
        result = train(load_config(SMOKE, [f"trainer.output_dir={run}", *common,
                                           "trainer.resume=latest"]))
        return [r["loss"] for r in result.metrics]

    expected = [r["loss"] for r in reference.metrics if r["step"] > 4]
    assert resume("resumed") == expected
    # the control: dropping the auxiliary state on resume changes the continuation
    monkeypatch.setattr(ckpt.Trainables, "auxiliary", lambda self: None)
    assert resume("without_auxiliary") != expected
