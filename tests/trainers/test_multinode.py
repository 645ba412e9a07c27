"""Two machines simulated on loopback (two `accelerate launch`, one rank each) train and checkpoint
like one process with the same global batch; the SLURM script's dry run prints what each node
runs, and every printed command is one `accelerate launch` accepts."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.trainers.helpers import ROOT, SMOKE, SMOKE_TRANSFORMER, free_port
from trainers import load_config
from trainers.train import train

RUN = ["trainer.progress=false", "trainer.plot=false", "trainer.sample_every=0",
       "trainer.max_steps=4", "trainer.checkpoint_every=2"]


def launch_two_machines(run: Path, *overrides: str, config: Path = SMOKE,
                        accelerate_config: Path | None = None) -> None:
    """Machine 0 and machine 1 of a static rendezvous on 127.0.0.1 (a free port), one rank each."""
    port = str(free_port())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "1"}
    kind = ["--config_file", str(accelerate_config)] if accelerate_config else ["--multi_gpu"]
    machines = [subprocess.Popen(
        [shutil.which("accelerate") or "accelerate", "launch", *kind, "--num_machines", "2",
         "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
         "--main_process_port", port, "--rdzv_backend", "static", "-m", "trainers.train",
         "--config", str(config), f"trainer.output_dir={run}", *RUN, *overrides],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) for rank in (0, 1)]
    outputs = [machine.communicate(timeout=900)[0] for machine in machines]
    for rank, (machine, output) in enumerate(zip(machines, outputs)):
        assert machine.returncode == 0, f"machine {rank}:\n{output[-3000:]}"
    assert "with 2 process(es) (distributed type MULTI_CPU" in outputs[0]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


def test_two_machines_on_loopback_train_and_checkpoint_like_one_process(tmp_path):
    run = tmp_path / "two_machines"
    launch_two_machines(run, "data.batch_size=8", "model.noise_std=0.0")
    state = json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 4
    assert (run / "checkpoint-4" / "rng-rank1.json").is_file()  # written by the second machine
    single = train(load_config(SMOKE, [f"trainer.output_dir={tmp_path / 'single'}", *RUN,
                                       "data.batch_size=16", "model.noise_std=0.0"]))
    torch.testing.assert_close(_weights(run / "checkpoint-4" / "model"),
                               _weights(single.checkpoint / "model"), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_machines_fsdp2_resume_exactly(tmp_path):
    fsdp = ROOT / "configs" / "accelerate" / "fsdp2.yaml"
    run, resumed = tmp_path / "fsdp", tmp_path / "resumed"
    launch_two_machines(run, "data.batch_size=8", config=SMOKE_TRANSFORMER,
                        accelerate_config=fsdp)
    shutil.copytree(run / "checkpoint-2", resumed / "checkpoint-2")
    launch_two_machines(resumed, "data.batch_size=8", "trainer.resume=latest",
                        config=SMOKE_TRANSFORMER, accelerate_config=fsdp)
    for part in ("model", "ema"):
        first, again = (_weights(r / "checkpoint-4" / part) for r in (run, resumed))
        assert all(torch.equal(first[k], again[k]) for k in first)


def _slurm(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "scontrol").write_text("#!/bin/bash\nprintf 'gpu-a17\\ngpu-b03\\n'\n")
    (fake / "scontrol").chmod(0o755)
    full_env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}", **env}
    for name in ("SLURM_JOB_NODELIST", "SLURM_NNODES", "SLURM_GPUS_ON_NODE", "SLURM_JOB_ID",
                 "OMP_NUM_THREADS", "GPUS_PER_NODE", "MAIN_PROCESS_PORT"):
        if name not in env:
            full_env.pop(name, None)
    return subprocess.run(["bash", "scripts/slurm_train.sh", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=60)


def test_slurm_dry_run_prints_each_nodes_launch_command(tmp_path):
    from accelerate.commands.launch import launch_command_parser

    slurm = {"SLURM_JOB_NODELIST": "gpu-a17,gpu-b03", "SLURM_NNODES": "2",
             "SLURM_GPUS_ON_NODE": "4", "SLURM_JOB_ID": "987654"}
    done = _slurm(tmp_path, "--dry-run", "configs/smoke.yaml", "trainer.output_dir=/shared/x",
                  "trainer.max_steps=5", **slurm, ACCELERATE_CONFIG="configs/accelerate/fsdp2.yaml")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    for rank, (line, host) in enumerate(zip(lines, ("gpu-a17", "gpu-b03"))):
        prefix, command = line.split(": ", 1)
        assert prefix == f"node {rank} ({host})"
        words = shlex.split(command)
        assert words[:3] == ["OMP_NUM_THREADS=8", "accelerate", "launch"]
        args = launch_command_parser().parse_args(words[3:])  # accelerate accepts every flag
        assert (args.num_machines, args.num_processes, args.machine_rank) == (2, 8, rank)
        assert (args.main_process_ip, args.main_process_port) == ("gpu-a17", 20000 + 987654 % 20000)
        assert args.rdzv_backend == "c10d" and args.config_file == "configs/accelerate/fsdp2.yaml"
        assert args.module and args.training_script == "trainers.train"
        assert args.training_script_args == ["--config", "configs/smoke.yaml",
                                             "trainer.output_dir=/shared/x",
                                             "trainer.max_steps=5", "trainer.resume=latest"]


@pytest.mark.parametrize("args, env, message", [
    (["--dry-run", "configs/nope.yaml"], {"SLURM_JOB_NODELIST": "a", "SLURM_NNODES": "2"},
     "error: config file 'configs/nope.yaml' does not exist"),
    (["--dry-run", "configs/smoke.yaml"], {},
     "error: SLURM_JOB_NODELIST is not set: submit with sbatch"),
    (["--dry-run", "configs/smoke.yaml"], {"SLURM_JOB_NODELIST": "a", "SLURM_NNODES": "3"},
     "names 2 node(s), SLURM_NNODES=3"),
])
def test_slurm_script_refuses_bad_input_with_one_line(tmp_path, args, env, message):
    done = _slurm(tmp_path, *args, **env)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and message in done.stderr
