"""The Accelerate trainer: outputs, exact resume (also after a hard kill mid-checkpoint),
gradient accumulation, two-rank data parallelism, non-finite losses, EMA, schedule, CLI errors."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.trainers.helpers import ROOT, SMOKE, free_port, run_ranks
from trainers import checkpoint as ckpt
from trainers import load_checkpoint_model, load_config
from trainers.ema import EMA
from trainers.metrics import duration
from trainers.protocol import CheckedCollate
from trainers.smoke import SmokeMLP
from trainers.train import NonFiniteLossError, lr_factor, main, train


def smoke(tmp_path: Path, *overrides: str, name: str = "run"):
    base = [f"trainer.output_dir={tmp_path / name}", "trainer.progress=false"]
    return load_config(SMOKE, base + list(overrides))


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


def losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def test_smoke_run_writes_every_output(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(SmokeMLP, "after_optimizer_step", lambda self: calls.append(1))
    config = smoke(tmp_path, "trainer.keep_last=1", "trainer.checkpoint_every=5")
    result = train(config)
    run = tmp_path / "run"
    assert result.step == 20 and len(calls) == 20
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 21))
    assert all({"loss", "lr", "grad_norm"} <= set(r) for r in records)
    # warm-up then cosine decay of the logged learning rate
    lrs = [r["lr"] for r in records]
    assert lrs[0] < lrs[1] and all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    assert sum(losses(run)[-5:]) < sum(losses(run)[:5])
    assert (run / "loss.png").stat().st_size > 0
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "step-0000010.png", "step-0000020.png"]
    with Image.open(run / "samples" / "step-0000020.png") as grid:  # 8 rows of 1x8, upscaled
        assert grid.size == (16 * 28, 16 * 7)  # 3x3 tiles of 1x8 pixels with gaps, x16
    assert [s for s, _ in ckpt.find_checkpoints(run)] == [20]  # keep_last=1
    folder = run / "checkpoint-20"
    assert {p.name for p in folder.iterdir()} == {
        "config.yaml", "model", "ema", "training_state.json", "training_state.safetensors",
        "rng-rank0.json", "trainer_state.json"}
    model, cfg = load_checkpoint_model(run)  # a run dir resolves to its newest checkpoint
    assert isinstance(model, SmokeMLP) and not model.training
    assert cfg.model.name == cfg["model"]["name"] == "smoke_mlp"
    assert cfg.trainer.max_steps == 20 and cfg.optimizer.lr == config.optimizer.lr
    ema_w, raw_w = weights(folder / "ema"), weights(folder / "model")
    torch.testing.assert_close(dict(model.state_dict()), ema_w, rtol=0, atol=0)
    assert any(not torch.equal(ema_w[k], raw_w[k]) for k in raw_w)
    plain, _ = load_checkpoint_model(folder, use_ema=False)
    torch.testing.assert_close(dict(plain.state_dict()), raw_w, rtol=0, atol=0)


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import trainers.checkpoint as C
    import trainers.train as T
    from trainers.state_io import save_state

    original = C.write_checkpoint_files

    def dies_midway(folder, config, state, parts):
        if state.step == 15:  # half a checkpoint, then a hard kill
            folder.mkdir()
            save_state(folder, C.TRAINING_STATE, parts.training_state())
            (folder / "config.yaml").write_text(config.to_yaml())
            os.kill(os.getpid(), signal.SIGKILL)
        original(folder, config, state, parts)

    C.write_checkpoint_files = dies_midway
    sys.exit(T.main(sys.argv[1:]))
    """
)


def test_resume_after_hard_kill_mid_checkpoint_matches_uninterrupted(tmp_path):
    common = ["trainer.checkpoint_every=5", "trainer.keep_last=5", "trainer.sample_every=0"]
    reference = train(smoke(tmp_path, *common, name="reference"))
    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", KILLER, "--config", str(SMOKE), f"trainer.output_dir={run}",
         "trainer.progress=false", *common],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == -9, done.stderr[-2000:]
    assert (run / f"{ckpt.TMP_PREFIX}15" / "config.yaml").exists()
    assert [s for s, _ in ckpt.find_checkpoints(run)] == [5, 10]
    # a folder with the right name but no trainer state is not a checkpoint either
    (run / "checkpoint-99").mkdir()
    (run / "checkpoint-99" / "config.yaml").write_text("model: {}\n")
    assert ckpt.latest_checkpoint(run).name == "checkpoint-10"

    resumed = train(smoke(tmp_path, *common, "trainer.resume=latest", name="killed"))
    assert resumed.step == 20
    assert not (run / f"{ckpt.TMP_PREFIX}15").exists()
    assert losses(run) == losses(tmp_path / "reference")  # bit-identical, step by step
    assert len(losses(run)) == 20
    for part in ("model", "ema"):
        torch.testing.assert_close(weights(resumed.checkpoint / part),
                                   weights(reference.checkpoint / part), rtol=0, atol=0)


def test_gradient_accumulation_equals_large_batch(tmp_path):
    common = ["trainer.max_steps=4", "trainer.sample_every=0", "trainer.checkpoint_every=0",
              "model.noise_std=0.0", "trainer.ema_decay=null"]
    big = train(smoke(tmp_path, *common, "data.batch_size=16", name="big"))
    small = train(smoke(tmp_path, *common, "data.batch_size=4",
                        "trainer.gradient_accumulation_steps=4", name="accum"))
    torch.testing.assert_close(weights(big.checkpoint / "model"),
                               weights(small.checkpoint / "model"), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(losses(tmp_path / "big")),
                               torch.tensor(losses(tmp_path / "accum")), rtol=1e-5, atol=1e-6)


# NorMuon: a data-parallel run also exercises the orthogonalised updates on all-reduced grads.
DP_OPTIMIZER = ["optimizer.name=normuon", "optimizer.lr=0.02", "optimizer.adamw_lr=0.01"]


def _two_rank_worker(output_dir: str) -> None:
    import shutil

    from accelerate import PartialState
    from accelerate.state import AcceleratorState

    def run(folder: str, *overrides: str):
        AcceleratorState._reset_state(reset_partial_state=True)  # forked, or run before
        return train(load_config(SMOKE, [f"trainer.output_dir={folder}", "trainer.progress=false",
                                         "data.batch_size=8", "trainer.max_steps=6",
                                         "trainer.sample_every=0", "trainer.checkpoint_every=3",
                                         *DP_OPTIMIZER, *overrides]))

    run(output_dir, "model.noise_std=0.0")
    state = PartialState()
    assert state.num_processes == 2
    model, _ = load_checkpoint_model(output_dir, use_ema=False)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(2)]
    torch.distributed.all_gather(gathered, flat)
    assert torch.equal(gathered[0], gathered[1]), "ranks ended with different weights"
    # per-rank noise and accumulation: a run resumed from its step-3 checkpoint is the same run
    noisy = ["model.noise_std=0.1", "trainer.gradient_accumulation_steps=2"]
    run(f"{output_dir}-noisy", *noisy)
    if state.is_main_process:
        shutil.copytree(f"{output_dir}-noisy/checkpoint-3", f"{output_dir}-resumed/checkpoint-3")
    state.wait_for_everyone()
    run(f"{output_dir}-resumed", *noisy, "trainer.resume=latest")


def test_two_rank_data_parallel_equals_single_process_and_resumes_exactly(tmp_path):
    result = run_ranks("tests.trainers.test_train:_two_rank_worker", str(tmp_path / "ddp"))
    assert result.returncode == 0, result.stderr[-3000:]
    rng = [(tmp_path / "ddp" / "checkpoint-6" / f"rng-rank{r}.json").read_text() for r in (0, 1)]
    assert rng[0] != rng[1]  # every rank keeps its own random streams
    single = train(smoke(tmp_path, "data.batch_size=16", "model.noise_std=0.0",
                         "trainer.max_steps=6", "trainer.sample_every=0", *DP_OPTIMIZER,
                         name="single"))
    torch.testing.assert_close(weights(tmp_path / "ddp" / "checkpoint-6" / "model"),
                               weights(single.checkpoint / "model"), rtol=1e-5, atol=1e-6)
    noisy, resumed = tmp_path / "ddp-noisy", tmp_path / "ddp-resumed"
    assert losses(resumed) == losses(noisy)[3:]
    for part in ("model", "ema"):
        torch.testing.assert_close(weights(resumed / "checkpoint-6" / part),
                                   weights(noisy / "checkpoint-6" / part), rtol=0, atol=0)


def test_nonfinite_losses_are_skipped_then_stop_the_run(tmp_path, monkeypatch):
    original = SmokeMLP.loss
    calls = {"n": 0}

    def flaky(self, batch):
        calls["n"] += 1
        out = original(self, batch)
        if calls["n"] == 3 or calls["n"] >= 8:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(SmokeMLP, "loss", flaky)
    with pytest.raises(NonFiniteLossError, match="last good checkpoint") as info:
        train(smoke(tmp_path, "trainer.max_nonfinite=3", "trainer.sample_every=0"))
    run = tmp_path / "run"
    assert str(run / "checkpoint-10") in str(info.value)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in records] == [False, False, True, False, False, False, False,
                                               True, True, True]
    state = json.loads((run / "checkpoint-10" / "trainer_state.json").read_text())
    assert state["nonfinite_total"] == 4 and state["nonfinite_consecutive"] == 3
    model, _ = load_checkpoint_model(run, use_ema=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bf16_tensorboard_and_running_stats_ema(tmp_path):
    result = train(smoke(tmp_path, "trainer.mixed_precision=bf16", "model.batchnorm=true",
                         "trainer.max_steps=6", "trainer.sample_every=0",
                         "trainer.tensorboard=true"))
    assert all(math.isfinite(x) for x in losses(tmp_path / "run"))
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    ema, raw = weights(result.checkpoint / "ema"), weights(result.checkpoint / "model")
    stats = [k for k in raw if "running_mean" in k]
    assert stats and all(torch.equal(ema[k], raw[k]) for k in stats)
    assert not torch.equal(raw[stats[0]], torch.zeros_like(raw[stats[0]]))


def test_nap_projection_keeps_initial_weight_norms(tmp_path, capsys, monkeypatch):
    pytest.importorskip("norms.nap")
    result = train(smoke(tmp_path, "trainer.nap=true", "trainer.max_steps=5",
                         "trainer.sample_every=0", "optimizer.lr=0.05"))
    torch.manual_seed(0)
    initial = SmokeMLP(**load_config(SMOKE).model.kwargs).state_dict()
    trained = weights(result.checkpoint / "model")
    matrices = [k for k, v in trained.items() if v.ndim == 2]
    assert matrices
    for key in matrices:
        torch.testing.assert_close(trained[key].norm(), initial[key].norm(), rtol=1e-5, atol=0)
        assert not torch.equal(trained[key], initial[key])
    assert any(not torch.isclose(trained[k].norm(), initial[k].norm(), rtol=1e-3)
               for k in trained if k.endswith("bias"))  # biases are not projected
    # without the projector module the run refuses to start
    monkeypatch.setitem(sys.modules, "norms.nap", None)
    out = tmp_path / "no_nap"
    assert main(["--config", str(SMOKE), "trainer.nap=true", f"trainer.output_dir={out}"]) == 2
    assert "norms.nap.NaPProjector" in capsys.readouterr().err and not out.exists()


@pytest.mark.float64
def test_ema_update_formula_and_buffers():
    model = SmokeMLP(batchnorm=True)
    ema = EMA(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        for b in model.buffers():
            if b.is_floating_point():
                b.add_(2.0)
    ema.update(model)
    for name, p in model.named_parameters():
        torch.testing.assert_close(ema.model.get_parameter(name), 0.9 * start[name] + 0.1 * p)
    for name, b in model.named_buffers():
        assert torch.equal(ema.model.get_buffer(name), b)
    assert not ema.model.training


def test_lr_schedule_warmup_then_cosine():
    tc = load_config(SMOKE, ["trainer.max_steps=110", "trainer.warmup_steps=10",
                             "trainer.min_lr_ratio=0.1"]).trainer
    assert lr_factor(0, tc) == pytest.approx(0.1) and lr_factor(9, tc) == pytest.approx(1.0)
    assert lr_factor(10, tc) == pytest.approx(1.0)
    assert lr_factor(60, tc) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(110, tc) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["trainer.max_step=5"], "did you mean 'trainer.max_steps'"),
        (["trainer.max_steps=five"], "'trainer.max_steps': value 'five' is not of type int"),
        (["optimizer.name=adamx"], "optimizer.name': value 'adamx'"),
        (["model.name=smoke_mpl"], "model 'smoke_mpl' is unknown"),
        (["model.hiden=3"], "did you mean 'model.hidden'"),
        (["data.name=nope"], "dataset 'nope' is unknown"),
        (["trainer.resume=somewhere/else"], "does not exist"),
        (["trainer.tensorboard=true"], "tensorboard"),
    ],
)
def test_config_errors_are_one_line_exit_2_and_write_nothing(
    tmp_path, capsys, monkeypatch, args, expected
):
    if args == ["trainer.tensorboard=true"]:  # behave as if tensorboard were not installed
        monkeypatch.setitem(sys.modules, "tensorboard", None)
    out = tmp_path / "out"
    code = main(["--config", str(SMOKE), f"trainer.output_dir={out}", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and expected in err
    assert not out.exists()


def test_missing_config_file_through_the_real_cli(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "trainers.train", "--config", str(tmp_path / "nope.yaml"),
         f"trainer.output_dir={tmp_path / 'out'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "nope.yaml" in done.stderr
    assert done.stderr.startswith("error: ") and "does not exist" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_start_lines_eta_and_threads(tmp_path, capsys, monkeypatch):
    seen = []
    original = SmokeMLP.loss

    def spy(self, batch):
        seen.append(torch.get_num_threads())
        return original(self, batch)

    monkeypatch.setattr(SmokeMLP, "loss", spy)
    before = torch.get_num_threads()
    train(smoke(tmp_path, "trainer.threads=2", "trainer.progress=true", "trainer.sample_every=0",
                "trainer.gradient_accumulation_steps=2"))
    out, err = capsys.readouterr()
    assert set(seen) == {2} and torch.get_num_threads() == before  # set for the run only
    assert ("training smoke_mlp on smoke (256 items): steps 1..20 (20 steps, about 2.5 epochs "
            "of 8 steps); global batch 32 = 16 per process x 1 process(es) x 2 accumulation") in out
    assert ("running on cpu with 1 process(es) (distributed type NO, precision no, 2 torch "
            "threads per process)") in out
    assert re.search(r"\nstep 4/20: [0-9.e-]+ s per step, about \d+m\d\ds to finish\n", out)
    assert "20/20 [" in err and re.search(r"<\d\d:\d\d", err)  # the progress bar's ETA
    assert (duration(65.4), duration(3725), duration(0.2)) == ("1m05s", "1h02m", "0m00s")


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_kill_9_of_the_launcher_stops_its_ranks(tmp_path):
    import shutil
    import signal
    import time

    port = free_port()
    run = tmp_path / "run"
    launcher = [shutil.which("accelerate") or "accelerate", "launch", "--multi_gpu",
                "--num_processes", "2", "--main_process_port", str(port), "-m", "trainers.train",
                "--config", str(SMOKE), f"trainer.output_dir={run}", "trainer.max_steps=1000000",
                "trainer.progress=false", "trainer.sample_every=0", "data.batch_size=4"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "1"}
    process = subprocess.Popen(launcher, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    ranks: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").stat().st_size):
            assert process.poll() is None and time.monotonic() < deadline, "ranks never trained"
            time.sleep(0.5)
        ranks = _children(process.pid)
        assert len(ranks) == 2, ranks
        process.send_signal(signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 60
        while any(_running(pid) for pid in ranks) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(_running(pid) for pid in ranks), "ranks outlived their launcher"
    finally:
        for pid in [process.pid, *ranks]:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def test_init_from_starts_a_new_run_from_the_donor_weights(tmp_path):
    donor = train(smoke(tmp_path, "trainer.max_steps=5", name="donor"))
    frozen = ("trainer.max_steps=1", "optimizer.lr=0", "trainer.warmup_steps=0")
    started = train(smoke(tmp_path, *frozen, f"trainer.init_from={donor.checkpoint}",
                          name="fine_tune"))
    fresh = train(smoke(tmp_path, *frozen, name="fresh"))
    expected = weights(donor.checkpoint / "model")
    got, baseline = weights(started.checkpoint / "model"), weights(fresh.checkpoint / "model")
    assert started.step == 1  # the step count starts afresh
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert not all(torch.equal(baseline[k], expected[k]) for k in expected)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.hidden=16", "has shape"),
        ("model.depth=3", "is in one and not the other"),
    ],
)
def test_init_from_refuses_weights_of_another_shape(tmp_path, capsys, override, expected):
    donor = train(smoke(tmp_path, "trainer.max_steps=2", name="donor"))
    code = main(["--config", str(SMOKE), f"trainer.output_dir={tmp_path / 'out'}",
                 f"trainer.init_from={donor.checkpoint}", override])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: trainer.init_from=") and "\n" not in err and expected in err


def test_init_from_a_missing_folder_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["--config", str(SMOKE), f"trainer.output_dir={out}",
                 f"trainer.init_from={tmp_path / 'nowhere'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "nowhere" in err and "\n" not in err
    assert not out.exists()


def test_checked_collate_passes_good_batches_and_names_bad_values():
    collate = CheckedCollate({"y": 10, "text": 5})
    batch = collate([{"x": torch.zeros(2), "y": 3, "text": torch.tensor([0, 4])}] * 2)
    assert batch["y"].tolist() == [3, 3] and batch["text"].shape == (2, 2)
    bad = [
        ({"y": 10, "text": torch.tensor([0, 1])}, "'y' values 3..10; the model takes 0..9"),
        ({"y": -1, "text": torch.tensor([0, 1])}, "'y' values -1..3"),
        ({"y": 3, "text": torch.tensor([0, 5])}, "'text' values 0..5; the model takes 0..4"),
        ({"y": 0.5, "text": torch.tensor([0, 1])}, "'y' as torch.float"),
    ]
    for item, message in bad:
        with pytest.raises(ValueError, match=re.escape(message)):
            collate([{"y": 3, "text": torch.tensor([1, 1])}, item])


def test_out_of_range_labels_from_a_dataset_are_one_line_exit_2(tmp_path, capsys, monkeypatch):
    """The loss reads no label values (no device waits); the trainer's collate does, on CPU."""
    from trainers.smoke import SmokeDataset

    original = SmokeDataset.__getitem__
    monkeypatch.setattr(SmokeDataset, "__getitem__",
                        lambda self, i: {**original(self, i), "label": torch.tensor(i)})
    monkeypatch.setattr(SmokeMLP, "batch_limits", lambda self: {"label": 200}, raising=False)
    code = main(["--config", str(SMOKE), f"trainer.output_dir={tmp_path / 'run'}",
                 "trainer.progress=false", "trainer.max_steps=40", "trainer.sample_every=0"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert err.startswith("error: the dataset gave 'label' values") and "takes 0..199" in err
