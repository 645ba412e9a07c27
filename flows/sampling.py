"""Sampling helpers: the per-call choice between sequential and Jacobi inversion, image grids.

References:
    Zhang, et al. Accelerate TarFlow Sampling with GS-Jacobi Iteration. arXiv:2505.12849, 2025
    (block difficulty is uneven; Jacobi pays iterations x tokens of arithmetic).
    Song, Meng, Ermon. Accelerating feedforward computation via parallel nonlinear equation
    solving. ICML 2021, arXiv:2002.03629.

The "auto" rule. Sequential inversion makes T one-token passes per block; Jacobi makes K
passes over T tokens. Which is faster depends on how much a T-token pass costs next to a
one-token pass at this batch size on this device: on a GPU (or a CPU at batch 1) a T-token pass
costs little more than a one-token pass, on a busy CPU at large batch it costs ~T times more.
``choose_method`` measures both pass times once per (model, batch, device, dtype) on the
model's own blocks (a few milliseconds) and predicts

    sequential = T * t_token,   jacobi = K * t_chunk,

with K the Jacobi passes per block seen in this model's previous Jacobi calls (depth-weighted
mean), or T / 4 before any.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["choose_method", "record_jacobi_passes", "save_image_grid", "timed_pass"]

_DEFAULT_PASS_FRACTION = 0.25


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
    """(seconds of a one-token cached pass, seconds of a T-token pass), summed over blocks."""
    from norms.transformer import KVCache

    t_token = t_chunk = 0.0
    tokens = model.num_tokens
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        for block in model.blocks:
            h = torch.randn(batch, tokens, block.width, device=device, dtype=dtype)
            t_chunk += timed_pass(lambda b=block, h=h: b.out(b.transformer(h)), repeats=1)
            cache = KVCache()
            block.transformer(h[:, : tokens // 2], cache=cache)
            base = cache.length

            def one_token(b=block, h=h, cache=cache, base=base) -> None:
                cache.truncate(base)
                b.out(b.transformer(h[:, :1], cache=cache))

            t_token += timed_pass(one_token, repeats=3)
    return t_token, t_chunk


def record_jacobi_passes(model: Any, iterations: list[int]) -> None:
    """Remember the Jacobi passes per block of the last call (used by :func:`choose_method`)."""
    model._jacobi_passes_seen = list(iterations)


def _expected_passes(model: Any) -> float:
    depths = [len(block.transformer.blocks) for block in model.blocks]
    seen = getattr(model, "_jacobi_passes_seen", None)
    if not seen:
        return _DEFAULT_PASS_FRACTION * model.num_tokens
    return sum(k * d for k, d in zip(seen, depths)) / sum(depths)


def choose_method(model: Any, batch: int, device: torch.device) -> str:
    """ "sequential" or "jacobi" for reversing ``batch`` samples of ``model`` on ``device``."""
    dtype = next(model.parameters()).dtype
    key = (batch, str(device), dtype)
    timings = model.__dict__.setdefault("_auto_timings", {})
    if key not in timings:
        timings[key] = _calibrate(model, batch, torch.device(device))
    t_token, t_chunk = timings[key]
    sequential = model.num_tokens * t_token
    jacobi = _expected_passes(model) * t_chunk
    return "jacobi" if jacobi < sequential else "sequential"


def save_image_grid(
    images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 1
) -> Path:
    """Write (B, C, H, W) images in [0, 1] as one PNG grid (1 px gaps); returns the path."""
    from PIL import Image

    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (B, 1 or 3, H, W), got {tuple(images.shape)}")
    b, c, h, w = images.shape
    nrow = nrow or max(1, int(round(b**0.5)))
    ncol = -(-b // nrow)
    grid = torch.ones(c, ncol * (h + 1) + 1, nrow * (w + 1) + 1)
    for i, image in enumerate(images.detach().float().cpu().clamp(0, 1)):
        r, k = divmod(i, nrow)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + k * (w + 1) : 1 + k * (w + 1) + w] = (
            image
        )
    array = (grid * 255).round().byte().permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[..., 0] if c == 1 else array)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
