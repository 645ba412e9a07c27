"""benchmarks/gpu.sh: refuses without CUDA in one line, and its dry run prints commands whose
options every script it calls accepts (the parts cannot be run here: no GPU)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def gpu_sh(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", "benchmarks/gpu.sh", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_refuses_without_cuda_in_one_line(tmp_path):
    done = gpu_sh("--out", str(tmp_path / "out"))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: no CUDA device visible to torch")
    assert done.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    ([], "--out DIR is required"),
    (["--out", "x", "--budget", "soon"], "--budget 'soon' is not a whole number of minutes"),
    (["--out", "x", "--fast"], "unknown option '--fast'"),
])
def test_bad_options_are_one_line_exit_2(args, message):
    done = gpu_sh(*args)
    assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1


def test_dry_run_prints_commands_the_scripts_accept(tmp_path):
    from trainers import load_config

    done = gpu_sh("--out", str(tmp_path), "--budget", "30", "--steps", "200", "--dry-run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"results file: {tmp_path}/gpu-results-")
    parts = dict(line.split(": ", 1) for line in lines[1:])
    assert [name.split(" ")[0] for name in parts] == [
        "throughput-1gpu", "jacobi-image", "jacobi-video", "train-realistic"]
    commands = {name.split(" ")[0]: shlex.split(command) for name, command in parts.items()}
    for words in commands.values():
        assert words[0] == sys.executable
    # the throughput options and variants parse
    import importlib.util

    spec = importlib.util.spec_from_file_location("throughput_cli", ROOT / "benchmarks" /
                                                  "throughput.py")
    throughput = importlib.util.module_from_spec(spec)
    sys.modules["throughput_cli"] = throughput
    spec.loader.exec_module(throughput)
    args = throughput.build_parser().parse_args(commands["throughput-1gpu"][2:])
    assert args.device == "cuda" and set(args.variants) <= set(throughput.VARIANTS)
    # the training run's overrides are valid config keys and values, 200 steps
    words = commands["train-realistic"]
    assert words[1:4] == ["-m", "trainers.train", "--config"]
    config = load_config(ROOT / words[4], words[5:])
    assert config.trainer.max_steps == 200 and config.trainer.mixed_precision == "bf16"
    # both sampling benchmarks run on the GPU, with options they list in --help
    for name in ("jacobi-image", "jacobi-video"):
        assert commands[name][2:4] == ["--device", "cuda"], commands[name]
        script = commands[name][1]
        helped = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, text=True,
                                capture_output=True, timeout=300)
        assert helped.returncode == 0, helped.stderr
        for word in commands[name][2:]:
            if word.startswith("--"):
                assert word in helped.stdout, (script, word)
