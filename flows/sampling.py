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

__all__ = [
    "DEFAULT_JACOBI_THRESHOLD",
    "choose_method",
    "record_jacobi_passes",
    "sample_image_flow",
    "save_image_grid",
    "timed_pass",
]

_DEFAULT_PASS_FRACTION = 0.25
DEFAULT_JACOBI_THRESHOLD = 1e-6  # relative change; keeps float32 samples within ~1e-3


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


def _load_flow(checkpoint: Path, config: dict[str, Any], device: str) -> Any:
    """A TransformerFlow from a checkpoint folder: EMA weights when present."""
    from flows.image import TransformerFlow

    weights = checkpoint / "ema" if (checkpoint / "ema").is_dir() else checkpoint / "model"
    if not (weights / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} has no model weights folder")
    try:
        model = TransformerFlow.from_pretrained(str(weights))
    except Exception as error:  # diffusers raises many kinds on a damaged folder
        raise ValueError(f"cannot load the weights in {str(weights)!r}: {error}") from error
    if model.config.num_classes != config.get("model", {}).get("num_classes", 0):
        raise ValueError(f"{str(weights)!r} does not match the checkpoint's config.yaml")
    return model.to(device).eval()


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
    model = _load_flow(checkpoint, config, device)
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
    start = time.perf_counter()
    images, info = model.sample(
        num,
        y,
        generator=generator,
        method=options.get("method", "auto"),
        guidance=guidance,
        guidance_rule=options.get("guidance_rule", "tarflow"),
        jacobi_threshold=options.get("jacobi_threshold", DEFAULT_JACOBI_THRESHOLD),
        progress=options.get("progress", True),
    )
    wall = time.perf_counter() - start
    side = images.shape[-1]
    out = save_image_grid(
        (images + 1) / 2, options.get("out", "samples.png"), nrow=None, scale=max(1, 64 // side)
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
