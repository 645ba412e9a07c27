"""Sampling helpers: the per-call choice between sequential and Jacobi inversion, sample.py's
entry point for ``tarflow`` checkpoints.

References:
    Zhang, et al. Accelerate TarFlow Sampling with GS-Jacobi Iteration. arXiv:2505.12849, 2025
    (block difficulty is uneven; Jacobi pays iterations x tokens of arithmetic).
    Song, Meng, Ermon. Accelerating feedforward computation via parallel nonlinear equation
    solving. ICML 2021, arXiv:2002.03629.

The "auto" rule. Sequential inversion makes T one-token passes per block; Jacobi makes K passes
over the not-yet-accepted tokens of the chunk (N token-passes in all). With a pass over n tokens
at batch B costing c0 + c1 B n (c0: the fixed cost of running the layers at all, c1: the cost
per token), the rule predicts, per block,

    sequential = T (c0 + c1 B),   jacobi = K c0 + N c1 B,

and picks the smaller sum. ``choose_method`` measures c0 and c1 B once per (batch, device,
dtype) on the model's first block (the fastest of a few one-token and T/4-token passes; blocks
are scaled by depth), and takes K and N per block from the model's previous Jacobi call (T/4
passes over half the tokens before any). On CUDA it picks Jacobi: a T-token pass costs about
what a one-token pass costs there until batches far beyond sampling sizes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from core.checkpoint import load_model
from core.images import save_image_grid

__all__ = [
    "choose_method",
    "predicted_costs",
    "record_jacobi_work",
    "sample_image_flow",
    "timed_pass",
]


def timed_pass(fn: Any, repeats: int = 3) -> float:
    """Median wall time of ``fn()`` in seconds (one warm-up call first)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _calibrate(model: Any, batch: int, device: torch.device) -> tuple[float, float]:
    """(c0, c1 * batch) in seconds for the model's first block (see the module docstring)."""
    from norms.transformer import KVCache

    block = model.blocks[0]
    tokens = model.num_tokens
    n = max(2, tokens // 4)
    dtype = next(model.parameters()).dtype
    h = torch.randn(batch, tokens, block.width, device=device, dtype=dtype)
    cache = KVCache()
    with torch.no_grad():
        block.transformer(h[:, : tokens // 2], cache=cache)
        base = cache.length

        def run(count: int) -> None:
            cache.truncate(base)
            block.out(block.transformer(h[:, base : base + count], cache=cache))

        t_one = min(timed_pass(lambda: run(1), repeats=1) for _ in range(3))
        t_many = min(timed_pass(lambda: run(n), repeats=1) for _ in range(2))
    per_token = max(t_many - t_one, 0.0) / (n - 1)
    return max(t_one - per_token, 0.0), per_token


def record_jacobi_work(model: Any, passes: list[int], token_passes: list[int]) -> None:
    """Remember the Jacobi work per block of the last call (used by :func:`choose_method`)."""
    model.__dict__["_jacobi_work_seen"] = (list(passes), list(token_passes))


def predicted_costs(model: Any, batch: int, device: torch.device | str) -> dict[str, float]:
    """Predicted seconds of sequential and Jacobi inversion of ``batch`` samples (CPU rule)."""
    dtype = next(model.parameters()).dtype
    key = (batch, str(device), dtype)
    timings = model.__dict__.setdefault("_auto_timings", {})
    if key not in timings:
        timings[key] = _calibrate(model, batch, torch.device(device))
    fixed, per_token = timings[key]
    tokens = model.num_tokens
    depths = [len(block.transformer.blocks) for block in model.blocks]
    passes, token_passes = model.__dict__.get("_jacobi_work_seen", (None, None))
    if passes is None:
        passes = [tokens / 4] * len(depths)
        token_passes = [k * tokens / 2 for k in passes]
    sequential = jacobi = 0.0
    for depth, k, n in zip(depths, passes, token_passes):
        scale = depth / depths[0]
        sequential += scale * tokens * (fixed + per_token)
        jacobi += scale * (k * fixed + n * per_token)
    return {"sequential": sequential, "jacobi": jacobi}


def choose_method(model: Any, batch: int, device: torch.device | str) -> str:
    """ "sequential" or "jacobi" for reversing ``batch`` samples of ``model`` on ``device``."""
    if torch.device(device).type == "cuda":
        return "jacobi"
    costs = predicted_costs(model, batch, device)
    return "jacobi" if costs["jacobi"] < costs["sequential"] else "sequential"


def sample_image_flow(checkpoint: Path, config: dict[str, Any], options: dict[str, Any]) -> dict:
    """sample.py entry point for ``tarflow`` checkpoints: write a PNG grid, return a summary.

    ``options``: num, method, guidance, guidance_rule, class_label (int or None), seed, out,
    jacobi_threshold, device, progress.
    """
    device = options.get("device", "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available; use --device cpu")
    num = options.get("num", 64)
    if num < 1:
        raise ValueError(f"--num must be a positive number of samples, got {num}")
    torch.manual_seed(options.get("seed", 0))
    model = load_model(checkpoint, options.get("use_ema", True), kind="tarflow")[0].to(device)
    classes = model.config.num_classes
    label = options.get("class_label")
    if label is not None:
        if not classes:
            raise ValueError("--class was given but this model is unconditional (num_classes=0)")
        if not 0 <= label < classes:
            raise ValueError(f"--class must lie in 0..{classes - 1}, got {label}")
        y = torch.full((num,), label, dtype=torch.long, device=device)
    elif classes:
        y = torch.arange(num, device=device) % classes
    else:
        y = None
    guidance = options.get("guidance", 0.0)
    if guidance and not classes:
        raise ValueError(f"--guidance {guidance} needs a class-conditional model")
    generator = torch.Generator(device=device).manual_seed(options.get("seed", 0))
    threshold = options.get("jacobi_threshold")  # None: the model's default
    start = time.perf_counter()
    images, info = model.sample(
        num,
        y,
        generator=generator,
        method=options.get("method", "auto"),
        guidance=guidance,
        guidance_rule=options.get("guidance_rule", "tarflow"),
        **({} if threshold is None else {"jacobi_threshold": threshold}),
        progress=options.get("progress", True),
    )
    wall = time.perf_counter() - start
    side = images.shape[-1]
    # one column per class when the labels cycle through the classes
    nrow = classes if classes and label is None and num >= classes else None
    out = save_image_grid(
        (images + 1) / 2, options.get("out", "samples.png"), columns=nrow, scale=max(1, 64 // side)
    )

    return {
        "model": config["model"]["name"],
        "method": info["method"],
        "iterations": info["iterations"],
        "wall_time_s": round(wall, 4),
        "num": num,
        "guidance": guidance,
        "checkpoint": str(checkpoint),
        "sample_shape": list(images.shape[1:]),
        "out": str(out),
    }
