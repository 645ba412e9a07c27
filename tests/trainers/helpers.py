"""Helpers shared by the trainer tests: the smoke configs, the CLI run in this process, CPU ranks.

``run_ranks("tests.trainers.test_x:_worker", *args)`` runs ``_worker(*args)`` on two CPU (gloo)
ranks forked from a fresh interpreter (forking this pytest process after earlier tests ran
multi-threaded OpenMP kernels can deadlock the children's matmuls). The ranks meet through a file
store and a free port, never a fixed one, so two such tests (or another engineer's run) never
collide.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainers.ranks import free_port

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
SMOKE_TRANSFORMER = ROOT / "configs" / "smoke_transformer.yaml"
QUIET = ["trainer.progress=false", "trainer.plot=false", "trainer.sample_every=0"]


def run_cli(run: Path, *overrides: str) -> int:
    """``python -m trainers.train --config configs/smoke.yaml`` into ``run``; the exit code."""
    from accelerate.state import AcceleratorState

    from trainers.train import main

    AcceleratorState._reset_state(reset_partial_state=True)  # several runs in one test
    return main(["--config", str(SMOKE), f"trainer.output_dir={run}", *QUIET, *overrides])


def launch_cpu_ranks(function: Callable[..., Any], args: tuple, processes: int = 2) -> None:
    """``function(*args)`` on ``processes`` forked gloo ranks (Accelerate's debug launch)."""
    from accelerate.utils import PrepareForLaunch, patch_environment
    from torch.multiprocessing import start_processes

    with tempfile.NamedTemporaryFile() as rendezvous, patch_environment(
        world_size=processes, master_addr="127.0.0.1", master_port=str(free_port()),
        accelerate_mixed_precision="no", accelerate_debug_rdv_file=rendezvous.name,
        accelerate_use_cpu="yes", gloo_socket_ifname="lo",
    ):
        start_processes(PrepareForLaunch(function, debug=True), args=args, nprocs=processes,
                        start_method="fork")


def run_ranks(worker: str, *args: str, processes: int = 2,
              timeout: float = 900) -> subprocess.CompletedProcess:
    """``module:function`` run by ``launch_cpu_ranks`` in a fresh interpreter; its result."""
    module, function = worker.split(":")
    code = ("import importlib, sys; sys.path.insert(0, sys.argv[1]);"
            "from tests.trainers.helpers import launch_cpu_ranks;"
            f"fn = getattr(importlib.import_module({module!r}), {function!r});"
            f"launch_cpu_ranks(fn, tuple(sys.argv[2:]), {processes})")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, str(ROOT), *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)
