"""Every command line, run as a user runs it (a subprocess): bad input is one ``error:`` line on
stderr and exit status 2, never a traceback, and nothing is computed or written first.

One parametrised battery over the CLIs (the trainer, sample.py, flows.video, diffusion.sample,
flows.posterior, flows.pta): nonsense numbers, damaged or mismatched checkpoints, damaged chain
files, a busy or used run folder, outputs that cannot be written. A bug, by contrast, keeps its
traceback (exit 1): tested in tests/core/test_cli.py and tests/trainers/test_checkpoint.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.core.helpers import TINY_FLOW, write_tiny_flow

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "PYTHONWARNINGS": "ignore"}
TRAIN = ["-m", "trainers.train", "--config", str(SMOKE), "trainer.progress=false",
         "trainer.plot=false", "trainer.sample_every=0"]
RESUME = ["trainer.resume=latest", "trainer.max_steps=6", "trainer.checkpoint_every=2"]


def run(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Shared inputs: a tiny flow checkpoint, a trained smoke run, chain files."""
    root = tmp_path_factory.mktemp("inputs")
    write_tiny_flow(root / "flow")
    status = _in_process([*TRAIN, f"trainer.output_dir={root / 'smoke'}",
                             "trainer.max_steps=4", "trainer.checkpoint_every=2",
                             "trainer.keep_last=5"])
    assert status == 0
    rng = np.random.default_rng(0)
    np.savez(root / "chain.npz", samples=rng.normal(size=(400, 2)),
             ln_posterior=-0.5 * rng.normal(size=400) ** 2)
    (root / "folder").mkdir()
    (root / "file.txt").write_text("not a folder")
    return root


# --------------------------------------------------------------------------- damaged inputs


def _copy(files: Path, name: str, tmp: Path) -> Path:
    target = tmp / name
    shutil.copytree(files / name, target)
    return target


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damaged_run(damage: Callable[[Path], object]) -> Callable[[Path, Path], list[str]]:
    """Resume the smoke run after ``damage(checkpoint-4)``."""

    def build(files: Path, tmp: Path) -> list[str]:
        run_dir = _copy(files, "smoke", tmp)
        damage(run_dir / "checkpoint-4")
        return [*TRAIN, f"trainer.output_dir={run_dir}", *RESUME]

    return build


def _flow_with(change: Callable[[Path], object]) -> Callable[[Path, Path], list[str]]:
    """sample.py on the tiny flow checkpoint after ``change(checkpoint)``."""

    def build(files: Path, tmp: Path) -> list[str]:
        folder = _copy(files, "flow", tmp)
        change(folder)
        return [str(ROOT / "sample.py"), "--checkpoint", str(folder), "--num", "2",
                "--no-progress",
                "--out", str(tmp / "out.png")]

    return build


def _weights_of_another_width(folder: Path) -> None:
    """config.yaml and config.json say width 16; the safetensors hold a width-32 flow."""
    from flows.image import TransformerFlow

    TransformerFlow(**{**TINY_FLOW, "width": 32}).save_pretrained(folder / "wide")
    weights = "diffusion_pytorch_model.safetensors"
    shutil.copy(folder / "wide" / weights, folder / "model" / weights)


def _another_kind(folder: Path) -> None:
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["model"] = {"name": "normal_adapted"}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))


def _lines(text: str) -> Callable[[Path], object]:
    return lambda path: path.write_text(text)


def _used_folder(files: Path, tmp: Path) -> list[str]:
    return [*TRAIN, f"trainer.output_dir={_copy(files, 'smoke', tmp)}", "trainer.max_steps=2"]


def _trainer(*overrides: str) -> Callable[[Path, Path], list[str]]:
    return lambda files, tmp: [*TRAIN, f"trainer.output_dir={tmp / 'run'}", *overrides]


def _sample(*options: str) -> Callable[[Path, Path], list[str]]:
    return lambda files, tmp: [str(ROOT / "sample.py"), "--checkpoint", str(files / "flow"),
                               "--no-progress", "--out", str(tmp / "out.png"), *options]


def _video(*options: str) -> Callable[[Path, Path], list[str]]:
    return lambda files, tmp: ["-m", "flows.video", "--checkpoint", str(files / "flow"),
                               "--out", str(tmp / "out.mp4"), *options]


def _diffusion(*options: str) -> Callable[[Path, Path], list[str]]:
    return lambda files, tmp: ["-m", "diffusion.sample", "--checkpoint", str(files / "flow"),
                               "--prompt", "front view", "--out", str(tmp / "out.png"), *options]


def _evidence(*options: str, chain: str = "chain.npz") -> Callable[[Path, Path], list[str]]:
    return lambda files, tmp: ["-m", "flows.posterior", str(files / chain), "--epochs", "2",
                               *[o.format(files=files, tmp=tmp) for o in options]]


def _truncated_chain(files: Path, tmp: Path) -> list[str]:
    shutil.copy(files / "chain.npz", tmp / "cut.npz")
    _truncate(tmp / "cut.npz")
    return ["-m", "flows.posterior", str(tmp / "cut.npz")]


def _pta(*options: str) -> Callable[[Path, Path], list[str]]:
    return lambda files, tmp: ["-m", "flows.pta", "compare", "--models", "powerlaw", "--no-plots",
                               *[o.format(files=files, tmp=tmp) for o in options]]


BIG = str(2**70)  # past what torch.Generator.manual_seed takes


def _seed(value: str) -> str:
    """The error line of every ``--seed`` outside 0..2**63-1 (core.cli.random_seed)."""
    return f"argument --seed: must be an integer in 0..2**63-1 (= {2**63 - 1}), got '{value}'"


def _bad_seeds(cli: str, argv: Callable[..., Callable[[Path, Path], list[str]]]) -> dict:
    """The two cases of a ``--seed`` every CLI refuses: below 0 and past 2**63-1."""
    return {f"{cli} --seed -1": (argv("--seed", "-1"), _seed("-1")),
            f"{cli} --seed 2**70": (argv("--seed", BIG), _seed(BIG))}


# id -> (argv builder, text the error line must hold)
CASES: dict[str, tuple[Callable[[Path, Path], list[str]], str]] = {
    # the trainer's numbers (issue 14, item 5)
    "train max_grad_norm=-1": (_trainer("trainer.max_grad_norm=-1"), "trainer.max_grad_norm"),
    "train max_nonfinite=0": (_trainer("trainer.max_nonfinite=0"), "trainer.max_nonfinite"),
    "train checkpoint_every=-1": (_trainer("trainer.checkpoint_every=-1"), "checkpoint_every"),
    "train warmup_steps=-3": (_trainer("trainer.warmup_steps=-3"), "trainer.warmup_steps"),
    "train min_lr_ratio=5": (_trainer("trainer.min_lr_ratio=5"), "trainer.min_lr_ratio"),
    "train lr<0": (_trainer("optimizer.lr=-0.1"), "optimizer.lr"),
    "train lr=inf": (_trainer("optimizer.lr=.inf"), "not a finite number"),
    "train num_workers<0": (_trainer("data.num_workers=-1"), "data.num_workers"),
    "train batch > dataset": (_trainer("data.num_samples=8"), "allowed: data.batch_size <= 8"),
    "train model setting": (_trainer("model.hidden=-1"), "model.hidden=-1"),
    "train data.cache .pt": (
        lambda files, tmp: ["-m", "trainers.train", "--config",
                            str(ROOT / "configs" / "normal_adapted.yaml"),
                            f"trainer.output_dir={tmp / 'run'}", "data.num_samples=8",
                            "data.cache=normal_maps.pt"],
        "cache 'normal_maps.pt' must be a .safetensors file"),
    # the run folder (items 2 and 4)
    "train used folder": (_used_folder, "trainer.overwrite=true"),
    # damaged resume checkpoints (item 7)
    "resume truncated weights": (
        _damaged_run(lambda f: _truncate(f / "model" / "diffusion_pytorch_model.safetensors")),
        "is not a valid safetensors file"),
    "resume truncated optimizer": (
        _damaged_run(lambda f: _truncate(f / "training_state.safetensors")),
        "training_state.safetensors"),
    "resume broken trainer state": (
        _damaged_run(lambda f: _lines('{"step": 4,')(f / "trainer_state.json")),
        "trainer_state.json"),
    "resume broken training state": (
        _damaged_run(lambda f: _lines("[]")(f / "training_state.json")), "training_state.json"),
    "resume missing rng": (_damaged_run(lambda f: (f / "rng-rank0.json").unlink()),
                           "rng-rank0.json"),
    "resume pickled accelerator layout": (
        _damaged_run(lambda f: [(f / "training_state.json").unlink(), (f / "accelerator").mkdir()]),
        "pickle"),
    "resume another architecture": (
        lambda files, tmp: [*_damaged_run(lambda f: None)(files, tmp), "model.hidden=16"],
        "do not fit this model"),
    # sample.py
    "sample --guidance nan": (_sample("--guidance", "nan"), "--guidance"),
    "sample --num 0": (_sample("--num", "0"), "--num"),
    "sample --jacobi-threshold -1": (_sample("--jacobi-threshold", "-1"), "--jacobi-threshold"),
    "sample --jacobi-max-iter 0": (_sample("--jacobi-max-iter", "0"), "--jacobi-max-iter"),
    "sample --class 99": (_sample("--class", "99"), "--class must lie in 0..2"),
    "sample --seed text": (_sample("--seed", "x"), "--seed"),
    **_bad_seeds("sample", _sample),
    "sample --out folder": (
        lambda files, tmp: [str(ROOT / "sample.py"), "--checkpoint", str(files / "flow"),
                            "--out", str(tmp)],
        "is a folder"),
    "sample missing checkpoint": (
        lambda files, tmp: [str(ROOT / "sample.py"), "--checkpoint", str(tmp / "nowhere")],
        "does not exist"),
    "sample weights of another width": (_flow_with(_weights_of_another_width),
                                        "cannot load the weights"),
    "sample truncated weights": (
        _flow_with(lambda f: _truncate(f / "model" / "diffusion_pytorch_model.safetensors")),
        "cannot load the weights"),
    "sample model.name of another kind": (_flow_with(_another_kind), "holds a TransformerFlow"),
    "sample broken config": (_flow_with(lambda f: _lines("model: [")(f / "config.yaml")),
                             "cannot read"),
    # flows.video and diffusion.sample
    "video --guidance nan": (_video("--guidance", "nan"), "--guidance"),
    "video --frames 0": (_video("--frames", "0"), "--frames"),
    **_bad_seeds("video", _video),
    "video of an image checkpoint": (_video(), "not 'video_tarflow'"),
    "diffusion --num 0": (_diffusion("--num", "0"), "--num"),
    "diffusion --steps 0": (_diffusion("--steps", "0"), "--steps"),
    "diffusion --guidance nan": (_diffusion("--guidance", "nan"), "--guidance"),
    **_bad_seeds("diffusion", _diffusion),
    "diffusion of a flow checkpoint": (_diffusion(), "holds a 'tarflow' model"),
    # the evidence CLI
    "evidence --epochs -1": (_evidence("--epochs", "-1"), "--epochs"),
    "evidence --burn-in 1": (_evidence("--burn-in", "1"), "--burn-in"),
    "evidence --temperature nan": (_evidence("--temperature", "nan"), "--temperature"),
    **_bad_seeds("evidence", _evidence),
    "evidence --threads 0": (_evidence("--threads", "0"), "--threads"),
    "evidence truncated npz": (_truncated_chain, "not a readable .npz"),
    "evidence folder as chain": (_evidence(chain="folder"), "give a chain file"),
    "evidence missing chain": (_evidence(chain="nowhere.npz"), "nowhere.npz"),
    "evidence --out folder": (_evidence("--out", "{files}/folder"), "is a folder"),
    "evidence --out in missing folder": (_evidence("--out", "{tmp}/no/r.json"), "does not exist"),
    # flows.pta compare
    "pta --out file": (_pta("--out", "{files}/file.txt"), "is a file"),
    "pta --nfreqs 0": (_pta("--nfreqs", "0"), "--nfreqs"),
    "pta --steps 10": (_pta("--steps", "10"), "--steps"),
    "pta --ensembles 0": (_pta("--ensembles", "0"), "--ensembles"),
    "pta --epochs 0": (_pta("--epochs", "0"), "--epochs"),
    **_bad_seeds("pta", _pta),
    "pta --threads 0": (_pta("--threads", "0"), "--threads"),
    "pta unknown model": (lambda files, tmp: ["-m", "flows.pta", "compare", "--models", "nosuch",
                                              "--out", str(tmp / "out")], "'nosuch' is unknown"),
    "pta missing data": (_pta("--data", "{tmp}/nowhere", "--out", "{tmp}/out"), "does not exist"),
}


def _main(argv: list[str]) -> tuple[Callable[[list[str]], int], list[str]]:
    """The entry point a command line runs, and the arguments it gets."""
    import importlib

    module = argv[1] if argv[0] == "-m" else Path(argv[0]).stem
    rest = argv[2:] if argv[0] == "-m" else argv[1:]
    module = {"flows.posterior": "flows.posterior.cli", "flows.video": "flows.video.__main__",
              "flows.pta": "flows.pta.__main__"}.get(module, module)
    return importlib.import_module(module).main, rest


def _in_process(argv: list[str]) -> int:
    """The exit status of the CLI run through its ``main`` in this process."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # several trainer runs in one process
    main, rest = _main(argv)
    try:
        return main(rest)
    except SystemExit as stop:  # an argparse usage error of a parser that exits itself
        return stop.code


def _check(case: str, status: int, err: str, before: dict, work: Path) -> None:
    expected = CASES[case][1]
    assert status == 2, (status, err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert expected in lines[0], lines[0]
    assert _snapshot(work) == before  # nothing written, moved or deleted


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line_and_exit_2(
    case: str, files: Path, tmp_path: Path, capfd: pytest.CaptureFixture, monkeypatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    argv = CASES[case][0](files, work)
    before = _snapshot(work)
    monkeypatch.chdir(work)
    capfd.readouterr()
    status = _in_process(argv)
    _check(case, status, capfd.readouterr().err, before, work)


# one case per command line, run as a user runs it: the module's entry point and exit status
AS_SUBPROCESS = ["resume truncated optimizer", "sample weights of another width",
                 "sample --seed 2**70", "video --frames 0", "diffusion --steps 0",
                 "evidence truncated npz", "pta --out file"]


@pytest.mark.parametrize("case", AS_SUBPROCESS)
def test_as_a_subprocess(case: str, files: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    argv = CASES[case][0](files, work)
    before = _snapshot(work)
    result = run(argv, cwd=work)
    _check(case, result.returncode, result.stderr, before, work)


def _snapshot(folder: Path) -> dict[Path, int]:
    """Every file under ``folder`` with its modification time (the lock file aside)."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


def test_a_second_trainer_on_a_locked_folder_is_one_error_line(files: Path, tmp_path) -> None:
    from trainers.run_folder import RunLock

    with RunLock(tmp_path / "run"):  # this test process is the running trainer
        result = run([*TRAIN, f"trainer.output_dir={tmp_path / 'run'}", "trainer.max_steps=2"])
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert f"pid {os.getpid()}" in lines[0] and result.stdout == ""
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
