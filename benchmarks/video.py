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

Without a checkpoint, a randomly initialised model of the config's size (8 frames of 16 tokens)
is timed. Prints a markdown table and one JSON line.
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

from flows.video import VideoTransformerFlow  # noqa: E402


def _median_time(fn, repeats: int) -> tuple[float, object]:
    result = fn()  # warm-up (and the auto rule's calibration)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def load_model(checkpoint: str | None) -> VideoTransformerFlow:
    if checkpoint:
        from trainers.checkpoint import load_checkpoint_model

        model, _ = load_checkpoint_model(checkpoint)
        return model.eval()
    import yaml

    config = yaml.safe_load(Path("configs/moving_digits_video.yaml").read_text())["model"]
    config.pop("name")
    model = VideoTransformerFlow(**config).eval()
    with torch.no_grad():  # random, non-trivial output projections
        for block in [*model.local, model.global_block]:
            block.out.weight.normal_(std=0.02)
    return model


def speed(model: VideoTransformerFlow, batch: int, args: argparse.Namespace) -> dict:
    generator = torch.Generator().manual_seed(batch)
    z = torch.randn((batch, model.config.frames, *model.frame_shape), generator=generator)
    y = text = None
    if model.config.text_tokens:
        text = model.encode_prompts(["a 3 and a 7 moving apart"] * batch)
    common = dict(jacobi_threshold=args.threshold, jacobi_max_iter=args.max_iter)
    t_seq, (x_seq, _) = _median_time(
        lambda: model.reverse(z, y, text, method="sequential"), args.repeats
    )
    t_jac, (x_jac, info) = _median_time(
        lambda: model.reverse(z, y, text, method="jacobi", **common), args.repeats
    )
    model.__dict__.pop("_auto_timings", None)
    t_auto, (_, auto_info) = _median_time(
        lambda: model.reverse(z, y, text, method="auto", **common), args.repeats
    )
    passes = info["iterations_per_frame"]
    return {
        "batch": batch,
        "tokens_per_frame": model.tokens_per_frame,
        "frames": model.config.frames,
        "sequential_s": t_seq,
        "jacobi_s": t_jac,
        "speedup": t_seq / t_jac,
        "jacobi_passes_per_frame": passes,
        "local_passes": info["local_iterations"],
        "max_abs_diff": float((x_seq - x_jac).abs().max()),
        "auto_s": t_auto,
        "auto_method": auto_info["method"],
        "auto_vs_best": t_auto / min(t_seq, t_jac),
    }


def quality(model: VideoTransformerFlow, args: argparse.Namespace) -> dict:
    from flows.video_data import moving_digits

    cfg = model.config
    options = dict(frames=cfg.frames, image_size=cfg.image_size, digit_size=8, speed=1.0)
    options["text_tokens"] = cfg.text_tokens
    held_out = moving_digits(split="test", num_videos=args.eval_videos, **options)
    batch = torch.utils.data.default_collate([held_out[i] for i in range(len(held_out))])
    torch.manual_seed(0)
    with torch.no_grad():
        bpd = float(model.loss(batch)["bits_per_dim"])
    real = batch["x"].flatten(0, 1).flatten(1)  # a bank of real frames
    generator = torch.Generator().manual_seed(0)
    text = batch["text"][: args.samples] if cfg.text_tokens else None
    result = {"bits_per_dim": bpd, "eval_videos": len(held_out), "samples": args.samples}
    for how in ("none", "tweedie", "learned"):
        generator.manual_seed(0)
        video, _ = model.sample(
            args.samples,
            text=text,
            generator=generator,
            denoise=how,
            method="jacobi",
            jacobi_threshold=args.threshold,
        )
        frames = video.flatten(0, 1).flatten(1)
        nearest = torch.cdist(frames, real).pow(2).min(dim=1).values / frames.shape[1]
        result[f"nearest_frame_mse_{how}"] = float(nearest.mean())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="trained video_tarflow run or checkpoint folder")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=1e-7)
    parser.add_argument("--max-iter", type=int, default=32)
    parser.add_argument("--eval-videos", type=int, default=128)
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_model(args.checkpoint)
    rows = [speed(model, b, args) for b in args.batches]
    print(
        "| batch | sequential s | jacobi s | speed-up | passes/frame (mean) | max abs diff "
        "| auto s (picked) | auto / best |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        mean_passes = sum(r["jacobi_passes_per_frame"]) / len(r["jacobi_passes_per_frame"])
        picked = f"{r['auto_method']['global']}/{r['auto_method']['local']}"
        print(
            f"| {r['batch']} | {r['sequential_s']:.4f} | {r['jacobi_s']:.4f} | "
            f"{r['speedup']:.2f}x | {mean_passes:.1f} | {r['max_abs_diff']:.1e} | "
            f"{r['auto_s']:.4f} ({picked}) | {r['auto_vs_best']:.2f} |"
        )
    summary = {"speed": rows, "device": "cpu", "threads": torch.get_num_threads()}
    if args.checkpoint:
        summary["quality"] = quality(model, args)
        q = summary["quality"]
        print(f"\nheld-out bits/dim ({q['eval_videos']} videos): {q['bits_per_dim']:.3f}")
        for how in ("none", "tweedie", "learned"):
            print(f"nearest-real-frame MSE, denoise={how}: {q[f'nearest_frame_mse_{how}']:.5f}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
