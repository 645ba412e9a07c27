"""Video flow benchmark: sequential vs video-aware Jacobi sampling, bits/dim, denoisers.

STARFlow-V (Apple 2025) samples the deep block frame by frame with Jacobi iteration started
from the previous frame; GS-Jacobi (Zhang et al., arXiv:2505.12849) reports the speed-ups of
parallel inversion on image TARFlows. This script measures, side by side in one run:

1. Wall time (median of ``--repeats``) of sequential and video-aware Jacobi inversion of the
   same noise, for batch 1 and 8, with Jacobi passes per frame, the max |difference| of the
   outputs, and ``method="auto"`` (what it picked and how long it took).
2. With ``--checkpoint`` (a trained ``video_tarflow`` run, e.g. from
   configs/moving_digits_video.yaml): bits/dim on held-out moving digits, and the mean squared
   distance of sampled frames to their nearest real frame with no / Tweedie / learned denoising.

    python benchmarks/video.py --checkpoint runs/moving_digits_video
    python benchmarks/video.py            # random weights, timing only
    python benchmarks/video.py --device cuda --batches 1 8   # on the GPU (benchmarks/gpu.sh)

Without a checkpoint, a randomly initialised model of the config's size (8 frames of 16 tokens)
is timed. Noise is drawn on the CPU (the same numbers on every ``--device``); every timed
inversion ends with a device synchronise. Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.checks import require_device  # noqa: E402
from core.cli import DEVICES, ArgumentParser, run_cli  # noqa: E402
from flows.jacobi import DEFAULT_JACOBI_THRESHOLD  # noqa: E402
from flows.planner import AutoPlanner  # noqa: E402
from flows.video import VideoFlowSampler, VideoTransformerFlow  # noqa: E402


def load_model(checkpoint: str | None, device: str = "cpu") -> VideoTransformerFlow:
    if checkpoint:
        from trainers.checkpoint import load_checkpoint_model

        model, _ = load_checkpoint_model(checkpoint)
        return model.to(device).eval()
    import yaml

    config = yaml.safe_load(Path("configs/moving_digits_video.yaml").read_text())["model"]
    config.pop("name")
    model = VideoTransformerFlow(**config).eval()
    with torch.no_grad():  # random, non-trivial output projections
        for block in [*model.local, model.global_block]:
            block.out.weight.normal_(std=0.02)
    return model.to(device)


def speed(model: VideoTransformerFlow, batch: int, args: argparse.Namespace) -> list[dict]:
    """Rows: sequential, Jacobi variants and auto on the same noise, timed interleaved.

    Every repeat runs each method once in turn, so a busy shared machine slows all of them
    alike; the table reports medians over repeats.
    """
    generator = torch.Generator().manual_seed(batch)
    z = torch.randn((batch, model.config.frames, *model.frame_shape), generator=generator)
    z = z.to(model.device)
    y = text = None
    if model.config.text_tokens:
        text = model.encode_prompts(["a 3 and a 7 moving apart"] * batch)
    n, frames = model.tokens_per_frame, model.config.frames
    common = dict(jacobi_threshold=args.threshold, jacobi_max_iter=args.max_iter)
    methods = {
        "sequential": dict(method="sequential", **common),
        "jacobi, frame chunks, previous-frame init": dict(method="jacobi", **common),
        "jacobi, frame chunks, noise init": dict(method="jacobi", jacobi_init="noise", **common),
        f"jacobi, {frames}-frame chunk": dict(method="jacobi", jacobi_chunk=n * frames, **common),
        "auto": dict(method="auto", **common),
    }
    # One sampler per setting; auto's planner sees every run of the others too.
    planner = AutoPlanner()
    samplers = {
        name: VideoFlowSampler(model, planner=planner, **options)
        for name, options in methods.items()
    }
    # Warm up; auto calibrates its pass times and learns the passes of the default Jacobi.
    outputs = {name: sampler.reverse(z, y, text) for name, sampler in samplers.items()}
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, sampler in samplers.items():
            start = time.perf_counter()
            sampler.reverse(z, y, text)
            times[name].append(time.perf_counter() - start)
    t_seq = statistics.median(times["sequential"])
    # auto is judged against the best fixed setting it can choose (not noise init).
    best = min(
        statistics.median(times[name])
        for name in methods
        if "auto" not in name and "noise" not in name
    )
    x_seq = outputs["sequential"][0]
    rows = []
    for name in methods:
        x, info = outputs[name]
        t = statistics.median(times[name])
        passes = info["iterations_per_frame"]
        label = name
        if name == "auto":
            chunk = info["jacobi_chunk"]["global"]
            deep = info["method"]["global"] + (f"@{chunk}" if chunk else "")
            label = f"auto -> {deep}/{info['method']['local']}"
        row = {
            "batch": batch,
            "method": label,
            "seconds": t,
            "speedup": t_seq / t,
            "passes_per_frame": sum(passes) / len(passes),
            "local_passes": info["local_iterations"],
            "max_abs_diff": float((x_seq - x).abs().max()),
        }
        if name == "auto":
            row["auto_vs_best"] = t / best
        rows.append(row)
    return rows


def thresholds(model: VideoTransformerFlow, batch: int, args: argparse.Namespace) -> list[dict]:
    """Jacobi in one-frame and in whole-window chunks at each of ``args.thresholds`` against
    sequential on the same noise (seeds 0 .. ``args.seeds`` - 1): worst max |difference|, deep
    passes per frame and speed-up (medians over the seeds' timed runs). The first row is the
    flow's own sensitivity: sequential on z times (1 + 1e-7 eps), float32 rounding's size."""
    n, frames = model.tokens_per_frame, model.config.frames
    chunks = {"frame": None, "window": n * frames}
    runs = {}  # (seed, name) -> (x, info, seconds)
    for seed in range(args.seeds):
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn((batch, frames, *model.frame_shape), generator=generator)
        nudge = 1 + 1e-7 * torch.randn(z.shape, generator=generator)
        z, nudge = z.to(model.device), nudge.to(model.device)
        text = None
        if model.config.text_tokens:
            text = model.encode_prompts(["a 3 and a 7 moving apart"] * batch)
        samplers = {("sequential", None): VideoFlowSampler(model, "sequential")}
        for t in args.thresholds:
            for chunk in chunks:
                samplers[(chunk, t)] = VideoFlowSampler(
                    model, "jacobi", jacobi_threshold=t, jacobi_max_iter=args.max_iter,
                    jacobi_chunk=chunks[chunk],
                )  # fmt: skip
        for name, sampler in samplers.items():
            sampler.reverse(z, text=text)  # warm-up
            start = time.perf_counter()
            x, info = sampler.reverse(z, text=text)
            runs[(seed, name)] = (x, info, time.perf_counter() - start)
        runs[(seed, "nudged")] = samplers[("sequential", None)].reverse(z * nudge, text=text)
    sensitivity = max(
        float((runs[(s, "nudged")][0] - runs[(s, ("sequential", None))][0]).abs().max())
        for s in range(args.seeds)
    )
    rows = [{"batch": batch, "threshold": 0.0, "chunk": "sequential, z x (1 + 1e-7 eps)",
             "max_abs_diff": sensitivity, "passes_per_frame": [float(n)], "speedup": 1.0}]
    for t in args.thresholds:
        for chunk in chunks:
            seeds = range(args.seeds)
            exact = [runs[(s, ("sequential", None))] for s in seeds]
            mine = [runs[(s, (chunk, t))] for s in seeds]
            rows.append({
                "batch": batch, "threshold": t, "chunk": chunk,
                "max_abs_diff": max(float((x - e[0]).abs().max()) for (x, _, _), e in
                                    zip(mine, exact)),
                "passes_per_frame": [sum(i["iterations_per_frame"]) / frames for _, i, _ in mine],
                "speedup": statistics.median(e[2] / m[2] for m, e in zip(mine, exact)),
            })  # fmt: skip
    return rows


def quality(model: VideoTransformerFlow, args: argparse.Namespace) -> dict:
    from flows.video.data import moving_digits

    cfg = model.config
    options = dict(frames=cfg.frames, image_size=cfg.image_size, digit_size=8, speed=1.0)
    options["text_tokens"] = cfg.text_tokens
    held_out = moving_digits(split="test", num_videos=args.eval_videos, **options)
    batch = torch.utils.data.default_collate([held_out[i] for i in range(len(held_out))])
    torch.manual_seed(0)
    with torch.no_grad():
        bpd = float(model.loss(batch)["bits_per_dim"])
    real = batch["x"].flatten(0, 1).flatten(1)  # a bank of real frames
    generator = torch.Generator(model.device).manual_seed(0)
    text = batch["text"][: args.samples] if cfg.text_tokens else None
    result = {"bits_per_dim": bpd, "eval_videos": len(held_out), "samples": args.samples}
    for how in ("none", "tweedie", "learned"):
        generator.manual_seed(0)
        sampler = VideoFlowSampler(model, "jacobi", jacobi_threshold=args.threshold)
        video, _ = sampler.sample(args.samples, text=text, generator=generator, denoise=how)
        frames = video.flatten(0, 1).flatten(1).cpu()
        nearest = torch.cdist(frames, real).pow(2).min(dim=1).values / frames.shape[1]
        result[f"nearest_frame_mse_{how}"] = float(nearest.mean())
    return result


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python benchmarks/video.py",
                            description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="trained video_tarflow run or checkpoint folder")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="where the model samples (the noise is drawn on the CPU)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threshold", type=float, default=DEFAULT_JACOBI_THRESHOLD)
    parser.add_argument("--max-iter", type=int, help="Jacobi passes per chunk at most")
    parser.add_argument("--eval-videos", type=int, default=128)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--thresholds", type=float, nargs="*", default=[],
                        help="also sweep these Jacobi thresholds (at the first batch size)")
    parser.add_argument("--seeds", type=int, default=3, help="noise draws of the sweep")
    return parser  # fmt: skip


def _run(argv: list[str] | None) -> None:
    args = build_parser().parse_args(argv)
    require_device(args.device)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_model(args.checkpoint, args.device)
    rows = [row for b in args.batches for row in speed(model, b, args)]
    print(
        f"threshold {args.threshold}, max_iter {args.max_iter}, "
        f"{model.config.frames} frames x {model.tokens_per_frame} tokens, device {args.device}, "
        f"{'trained ' + args.checkpoint if args.checkpoint else 'random weights'}"
    )
    print(
        "| batch | method | seconds | speed-up vs sequential | deep passes/frame "
        "| local passes/block | max abs diff |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        extra = f" (auto/best {r['auto_vs_best']:.2f})" if "auto_vs_best" in r else ""
        print(
            f"| {r['batch']} | {r['method']} | {r['seconds']:.4f} | {r['speedup']:.2f}x{extra} | "
            f"{r['passes_per_frame']:.1f} | {r['local_passes']} | {r['max_abs_diff']:.1e} |"
        )
    summary = {"speed": rows, "device": args.device, "threads": torch.get_num_threads()}
    if args.thresholds:
        sweep = thresholds(model, args.batches[0], args)
        print(f"\nthreshold sweep, batch {args.batches[0]}, {args.seeds} noise draws:")
        print("| threshold | chunk | max abs diff (worst draw) | deep passes/frame | speed-up |")
        print("|---|---|---|---|---|")
        for r in sweep:
            passes = ", ".join(f"{p:.1f}" for p in r["passes_per_frame"])
            print(f"| {r['threshold']:.0e} | {r['chunk']} | {r['max_abs_diff']:.1e} | {passes} "
                  f"| {r['speedup']:.2f}x |")
        summary["thresholds"] = sweep
    if args.checkpoint:
        summary["quality"] = quality(model, args)
        q = summary["quality"]
        print(f"\nheld-out bits/dim ({q['eval_videos']} videos): {q['bits_per_dim']:.3f}")
        for how in ("none", "tweedie", "learned"):
            print(f"nearest-real-frame MSE, denoise={how}: {q[f'nearest_frame_mse_{how}']:.5f}")
    print(json.dumps(summary))


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
