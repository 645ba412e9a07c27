"""Training throughput of the video flow: DDP vs FSDP2, with and without bf16, activation
checkpointing and torch.compile, side by side on the same ranks, batch and weights.

References: Apple, STARFlow-V (2025) and Gu et al., STARFlow, arXiv:2506.06276 (the model);
Zhao et al., PyTorch FSDP, arXiv:2304.11277; Chowdhery et al., "PaLM: Scaling Language Modeling
with Pathways", arXiv:2204.02311, appendix B (model FLOPs utilisation, MFU).

Each variant builds the model from the config with the same seed, wraps it the way the trainer
does (``trainers.train.LossModule``; torch DDP as Accelerate does, or ``trainers.sharding``'s
FSDP2; ``trainers.speedups`` for checkpointing and compile; bf16 autocast), and times full
training steps (forward, backward, AdamW step) on one fixed batch per rank, so data loading is
not measured. Per variant it reports the median step time (slowest rank), tokens/s (the flow's
sequence, frames x tokens per frame, over the global batch), the peak memory of rank 0
(``benchmarks.memory``: CUDA's allocator peak, or on CPU the profiler's allocation total, on an
extra step), and achieved FLOP/s = model FLOPs per step / step time. Model FLOPs are counted once
(``torch.utils.flop_counter.FlopCounterMode``: matmuls and attention of one forward + backward
of the plain model, times the ranks), so recomputation by activation checkpointing is not
counted as useful work. On a GPU listed in ``PEAK_TFLOPS`` the table adds MFU = achieved FLOP/s
per GPU / the GPU's dense peak for the variant's precision.

    python benchmarks/throughput.py --quick                    # 2 CPU ranks, a tiny video flow
    python benchmarks/throughput.py --quick --variants ddp fsdp2 fsdp2+bf16
    python benchmarks/throughput.py --device cuda --processes 1 --steps 20   # the realistic size
    python benchmarks/throughput.py --device cuda --processes 8 --json out.json

Prints a markdown table (and writes ``--json``). Wrong options print one ``error:`` line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name: (parallelism, bf16, activation checkpointing, compile)
VARIANTS: dict[str, tuple[str, bool, bool, bool]] = {
    "ddp": ("ddp", False, False, False),
    "ddp+bf16": ("ddp", True, False, False),
    "ddp+ac": ("ddp", False, True, False),
    "ddp+compile": ("ddp", False, False, True),
    "fsdp2": ("fsdp2", False, False, False),
    "fsdp2+bf16": ("fsdp2", True, False, False),
    "fsdp2+ac": ("fsdp2", False, True, False),
    "fsdp2+compile": ("fsdp2", False, False, True),
    "fsdp2+bf16+ac+compile": ("fsdp2", True, True, True),
    "ddp+bf16+compile": ("ddp", True, False, True),
}
DEFAULT_VARIANTS = ["ddp", "ddp+bf16", "ddp+ac", "ddp+compile", "fsdp2", "fsdp2+bf16",
                    "fsdp2+ac", "fsdp2+compile"]

# Dense peak TFLOP/s per GPU from NVIDIA's data sheets (SXM boards unless named): bf16 tensor
# cores, and fp32 without tensor cores (torch's default float32 matmul precision, "highest").
# The first name that occurs in torch.cuda.get_device_name() applies.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "fp32": 51.2},
    "H100": {"bf16": 989.4, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp32": 19.5},
}

QUICK_MODEL = {"frames": 4, "image_size": 16, "patch_size": 4, "width": 64, "num_heads": 2,
               "local_blocks": 2, "local_depth": 1, "global_depth": 2}
QUICK_DATA = {"frames": 4, "image_size": 16, "digit_size": 8, "num_videos": 64}


@dataclass
class Row:
    """One variant's measurements (times in seconds, memory in bytes, FLOP/s per step)."""

    variant: str
    step_s: float
    tokens_per_s: float
    peak_memory: int
    achieved_flops: float
    mfu: float | None
    note: str = ""


# --------------------------------------------------------------------------- one rank


def _batch(dataset: Any, size: int, rank: int) -> dict[str, Any]:
    from torch.utils.data import default_collate

    return default_collate([dataset[(rank * size + i) % len(dataset)] for i in range(size)])


def _to(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device) for k, v in batch.items()}


def count_model_flops(model: Any, batch: dict[str, Any]) -> int:
    """FLOPs of one forward + backward of ``model.loss`` (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model.loss(batch)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def _wrap(variant: str, model: Any, device: Any, world: int) -> tuple[Any, str]:
    """The module a step calls, wrapped as the trainer wraps it for this variant."""
    import torch

    from trainers import sharding
    from trainers.speedups import compile_loss, enable_activation_checkpointing
    from trainers.train import LossModule

    parallelism, _, checkpointing, compiled = VARIANTS[variant]
    if checkpointing:
        enable_activation_checkpointing(model)
    root = LossModule(model)
    if parallelism == "fsdp2":
        sharding.shard_model(root, model, sharding.FsdpRequest(), device)
    elif world > 1:
        ids = [device.index] if device.type == "cuda" else None
        root = torch.nn.parallel.DistributedDataParallel(root, device_ids=ids)
    note = ""
    if compiled:
        root, unavailable = compile_loss(root, device)
        note = f"eager: {unavailable}" if unavailable else ""
    return root, note


def _time_steps(step: Any, steps: int, device: Any) -> float:
    """Median seconds of ``steps`` calls of ``step``, the slowest rank's."""
    import torch
    import torch.distributed as dist

    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    median = torch.tensor(statistics.median(times), dtype=torch.float64, device=device)
    dist.all_reduce(median, op=dist.ReduceOp.MAX)
    return float(median)


def measure(variant: str, settings: dict[str, Any], batch: dict[str, Any], flops: int,
            device: Any) -> Row:
    """Build, wrap, warm up and time one variant; rank 0's peak memory."""
    import torch
    import torch.distributed as dist

    from benchmarks.memory import peak_memory
    from core.registry import get_model
    from trainers.config import OptimizerConfig
    from trainers.optim import build_optimizer

    world = dist.get_world_size()
    torch.manual_seed(0)
    model = get_model(settings["model_name"])(**settings["model"]).to(device)
    loss_fn, note = _wrap(variant, model, device, world)
    optimizer = build_optimizer(model, OptimizerConfig(name="adamw", lr=1e-4))
    bf16 = VARIANTS[variant][1]

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(settings["warmup"]):  # compiles, allocates, fills caches
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = _time_steps(step, settings["steps"], device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = peak_memory(step, device)
    tokens = settings["tokens_per_item"] * settings["batch"] * world
    achieved = flops * world / seconds
    return Row(variant, seconds, tokens / seconds, peak, achieved,
               mfu(achieved / world, bf16, device), note)


def mfu(flops_per_device: float, bf16: bool, device: Any) -> float | None:
    """Achieved / dense peak of this GPU for the precision, or None (CPU, GPU not listed)."""
    if device.type != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return flops_per_device / (peaks["bf16" if bf16 else "fp32"] * 1e12)
    return None


def _rank(rank: int, world: int, port: int, settings: dict[str, Any], out: str) -> None:
    """One rank: join the group, count FLOPs once, measure every variant; rank 0 writes."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch
    import torch.distributed as dist

    from core.registry import get_dataset, get_model

    torch.set_num_threads(settings["threads"])
    cuda = settings["device"] == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    try:
        dataset = get_dataset(settings["data_name"])(**settings["data"])
        batch = _to(_batch(dataset, settings["batch"], rank), device)
        torch.manual_seed(0)
        plain = get_model(settings["model_name"])(**settings["model"]).to(device)
        settings["tokens_per_item"] = plain.config.frames * plain.tokens_per_frame
        flops = count_model_flops(plain, batch)
        del plain
        rows = [measure(v, settings, batch, flops, device) for v in settings["variants"]]
        if rank == 0:
            Path(out).write_text(json.dumps({"flops_per_step": flops * world,
                                             "batch": settings["batch"],
                                             "rows": [asdict(r) for r in rows]}))
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- driver


def table(rows: list[dict[str, Any]], flops_per_step: int, device: str) -> str:
    """The results as a markdown table (FLOP/s in TFLOP/s on GPUs, GFLOP/s on CPUs)."""
    unit, scale = ("TFLOP/s", 1e12) if device == "cuda" else ("GFLOP/s", 1e9)
    lines = [f"model FLOPs per step (forward + backward, all ranks): {flops_per_step / 1e9:.4g} "
             "GFLOP", "",
             f"| variant | step (s) | tokens/s | peak memory rank 0 (MB) | achieved {unit} | MFU |"
             " note |", "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        share = "" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(f"| {r['variant']} | {r['step_s']:.4g} | {r['tokens_per_s']:.4g} | "
                     f"{r['peak_memory'] / 1e6:.1f} | {r['achieved_flops'] / scale:.4g} | "
                     f"{share} | {r['note']} |")
    return "\n".join(lines)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    from trainers.config import load_config

    config = load_config(args.config, check_model=True)
    model, data = dict(config.model.kwargs), dict(config.data.kwargs)
    if config.model.name != "video_tarflow":
        raise ValueError(f"--config {args.config} trains {config.model.name!r}; this benchmark "
                         "measures video_tarflow configs")
    if args.quick:
        model.update(QUICK_MODEL)
        data.update(QUICK_DATA)
    return {"model_name": config.model.name, "model": model, "data_name": config.data.name,
            "data": data, "batch": args.batch or (4 if args.quick else config.data.batch_size),
            "variants": args.variants, "steps": args.steps, "warmup": args.warmup,
            "device": args.device, "threads": args.threads}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every variant on ``args.processes`` ranks; the rank-0 results."""
    import torch.multiprocessing as mp

    from trainers.ranks import free_port

    settings = _settings(args)
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "results.json")
        mp.start_processes(_rank, args=(args.processes, free_port(), settings, out),
                           nprocs=args.processes, start_method="spawn")
        return json.loads(Path(out).read_text())


def _check(args: argparse.Namespace) -> None:
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"--variants {' '.join(unknown)} unknown; choose from: "
                         f"{', '.join(VARIANTS)}")
    for name in ("processes", "steps", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} {getattr(args, name)} must be >= 1")
    if args.warmup < 0 or (args.batch is not None and args.batch < 1):
        raise ValueError("--warmup must be >= 0 and --batch >= 1")
    if args.processes == 1 and any(VARIANTS[v][0] == "fsdp2" for v in args.variants):
        args.variants = [v for v in args.variants if VARIANTS[v][0] != "fsdp2"]
        print("note: one process: nothing to shard, the fsdp2 variants are left out")
    if args.device == "cuda":
        import torch

        from core.checks import require_device

        require_device(args.device)
        if args.processes > torch.cuda.device_count():
            raise ValueError(f"--processes {args.processes} > {torch.cuda.device_count()} GPUs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "video_realistic.yaml"))
    parser.add_argument("--quick", action="store_true",
                        help="a tiny video flow (4 frames of 16x16, width 64), batch 4 per rank")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS,
                        help=f"from: {', '.join(VARIANTS)}")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--processes", type=int, default=2, help="ranks (GPUs with cuda)")
    parser.add_argument("--batch", type=int, default=None,
                        help="videos per rank (default: the config's data.batch_size)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check(args)
        results = run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    size = "--quick" if args.quick else args.config
    print(f"{args.processes} {args.device} rank(s), {size}, batch {results['batch']} per rank, "
          f"median of {args.steps} step(s) after {args.warmup} warm-up step(s)")
    print(table(results["rows"], results["flops_per_step"], args.device))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         **results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
