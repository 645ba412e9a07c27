r"""Samplers of the transformer flows: the method choice, noise, inversion, denoising, decoding.

References:
    Zhai, Zhang, Gu, et al. Normalizing Flows are Capable Generative Models (TARFlow).
    arXiv:2412.06329, 2024 (sampling, guidance, the Tweedie denoising step).
    Zhang, et al. Accelerate TarFlow Sampling with GS-Jacobi Iteration. arXiv:2505.12849, 2025.

A sampler wraps one trained model and owns how it is inverted: the method ("sequential",
"jacobi" or "auto"), the Jacobi options and an :class:`~flows.planner.AutoPlanner` that
measures and remembers (the model holds the maths only: ``forward``, and ``reverse`` given one
:class:`~flows.jacobi.JacobiSolver` per block). Keep a sampler for as long as you sample the
same model, so ``auto`` learns once. :class:`FlowSampler` is the shared part;
:class:`ImageFlowSampler` serves :class:`flows.image.TransformerFlow` and
:class:`flows.video.VideoFlowSampler` the video flow. ``sample_image_flow`` is ``sample.py``'s
entry point for ``tarflow`` checkpoints.

Example:
    >>> import torch
    >>> from flows.image import TransformerFlow
    >>> flow = TransformerFlow(image_size=8, patch_size=2, width=32, num_heads=2,
    ...                        layers_per_block=[1, 1]).eval()
    >>> sampler = ImageFlowSampler(flow, method="jacobi")
    >>> images, info = sampler.sample(2, generator=torch.Generator().manual_seed(0))
    >>> images.shape, info["method"], len(info["iterations"])
    (torch.Size([2, 1, 8, 8]), 'jacobi', 2)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import torch

from core.checkpoint import load_model
from core.checks import require_device
from core.images import save_image_grid
from flows.jacobi import DEFAULT_JACOBI_THRESHOLD, JacobiSolver
from flows.planner import AutoPlanner, Setting, Stage, synchronize

__all__ = [
    "METHODS",
    "FlowSampler",
    "ImageFlowSampler",
    "sample_image_flow",
]

METHODS = ("sequential", "jacobi", "auto")


class FlowSampler:
    r"""What every flow sampler shares: the method, the Jacobi options and the planner.

    Arguments:
        model: the trained flow (eval mode is the caller's choice).
        method: "sequential", "jacobi" or "auto" (picked per call and stage by ``planner``).
        jacobi_threshold: the Jacobi stop rule (see :mod:`flows.jacobi`).
        jacobi_max_iter: passes per chunk at most (default: the chunk's length).
        jacobi_chunk: tokens per Jacobi chunk (default: the stage's own, see the subclass).
        sync_ranks: all-reduce Jacobi's stop decision over an initialised process group.
        planner: an :class:`~flows.planner.AutoPlanner` to share (default: a new one).
    """

    def __init__(
        self,
        model: Any,
        method: str = "auto",
        jacobi_threshold: float = DEFAULT_JACOBI_THRESHOLD,
        jacobi_max_iter: int | None = None,
        jacobi_chunk: int | None = None,
        sync_ranks: bool = False,
        planner: AutoPlanner | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method {method!r} is unknown; choose one of: {', '.join(METHODS)}")
        JacobiSolver(jacobi_threshold, jacobi_max_iter, jacobi_chunk)  # refuses bad options
        self.model, self.method = model, method
        self.jacobi_threshold, self.jacobi_max_iter = jacobi_threshold, jacobi_max_iter
        self.jacobi_chunk, self.sync_ranks = jacobi_chunk, sync_ranks
        self.planner = planner if planner is not None else AutoPlanner()

    @property
    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        parameter = next(self.model.parameters())
        return parameter.device, parameter.dtype

    def _key(self, *extra: Hashable) -> tuple:
        """The situation the planner's observations hold for (besides the stage)."""
        device, dtype = self._device_dtype
        return (str(device), dtype, self.jacobi_threshold, self.jacobi_max_iter, *extra)

    def _setting(self, stage: Stage, key: Hashable) -> Setting:
        """The setting of ``stage`` for this call; "jacobi" runs the stage's first Jacobi
        candidate (the sampler's ``jacobi_chunk``, or the stage's own chunk)."""
        if self.method == "sequential" or not stage.blocks:
            return Setting("sequential")
        if self.method == "jacobi":
            return stage.candidates[1]
        return self.planner.choose(stage, key, *self._device_dtype)

    def _solver(self, setting: Setting, max_iter: int | None) -> JacobiSolver:
        if setting.method == "sequential":
            return JacobiSolver.sequential()
        return JacobiSolver(self.jacobi_threshold, max_iter, setting.chunk, self.sync_ranks)

    def _timed(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        device, _ = self._device_dtype
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        return result, time.perf_counter() - start

    def sample(self, num: int, **kwargs: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """``num`` samples in [-1, 1] and what was done; each model's sampler defines it."""
        raise NotImplementedError

    @torch.no_grad()
    def sample_for_logging(
        self, num: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Samples in [0, 1] in eval mode, classes cycled when conditional (the trainer's hook)."""
        model = self.model
        parameter = next(model.parameters())
        y = None
        if model.config.num_classes:
            y = torch.arange(num, device=parameter.device) % model.config.num_classes
        was_training = model.training
        model.eval()
        samples, _ = self.sample(num, y=y, generator=generator)
        model.train(was_training)
        return (samples + 1) / 2


def jacobi_setting(chunk: int | None, natural: int) -> Setting:
    """Jacobi with ``chunk`` tokens per chunk, the stage's own chunk written as None."""
    return Setting("jacobi", None if chunk in (None, natural) else chunk)


class ImageFlowSampler(FlowSampler):
    r"""Sampler of :class:`flows.image.TransformerFlow`; all blocks share one method.

    Takes the options of :class:`FlowSampler`; ``jacobi_max_iter`` may list one pass budget
    per block (forward order); ``jacobi_chunk`` defaults to all tokens of the image.
    """

    def __init__(self, model: Any, method: str = "auto", **options: Any) -> None:
        blocks = len(model.blocks)
        budgets = options.pop("jacobi_max_iter", None)
        budgets = list(budgets) if isinstance(budgets, list | tuple) else [budgets] * blocks
        if len(budgets) != blocks:
            raise ValueError(f"jacobi_max_iter lists {len(budgets)} budgets for {blocks} blocks")
        for budget in budgets:
            JacobiSolver(max_iter=budget)  # refuses a budget below 1
        super().__init__(model, method, **options)
        self.budgets = budgets

    def _stage(self, batch: int, guided: bool) -> Stage:
        tokens = self.model.num_tokens
        return Stage(
            "blocks",
            tuple(self.model.blocks),
            rows=batch * (2 if guided else 1),
            tokens=tokens,
            context=tokens // 2,
            chunk=tokens,
            candidates=(Setting("sequential"), jacobi_setting(self.jacobi_chunk, tokens)),
        )

    @torch.no_grad()
    def reverse(
        self,
        z: torch.Tensor,
        y: torch.Tensor | None = None,
        guidance: float = 0.0,
        guidance_rule: str = "tarflow",
        progress: bool = False,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Invert z (B, C, H, W) -> (x, info): {"method", "jacobi_chunk", "iterations" (passes
        per block, forward order), "token_passes", "seconds"}."""
        stage = self._stage(z.shape[0], bool(guidance))
        key = self._key(bool(guidance), tuple(self.budgets))
        setting = self._setting(stage, key)
        solvers = [self._solver(setting, budget) for budget in self.budgets]
        (x, stats), seconds = self._timed(
            lambda: self.model.reverse(z, y, solvers, guidance, guidance_rule, progress)
        )
        self.planner.record(stage, key, setting, seconds, stats)
        return x, {
            "method": setting.method,
            "jacobi_chunk": setting.chunk,
            "iterations": [s.passes for s in stats],
            "token_passes": [s.token_passes for s in stats],
            "seconds": seconds,
        }

    @torch.no_grad()
    def sample(
        self,
        num: int,
        y: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        denoise: bool = True,
        guidance: float = 0.0,
        guidance_rule: str = "tarflow",
        progress: bool = False,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """``num`` images in [-1, 1]: z ~ N(0, I), reverse, Tweedie denoise, decode."""
        if num < 0:
            raise ValueError(f"number of samples must be >= 0, got {num}")
        device, dtype = self._device_dtype
        shape = (num, *self.model.sample_shape)
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        x, info = self.reverse(z, y, guidance, guidance_rule, progress)
        if denoise:
            x = self.model.denoise(x, y)
        return self.model.decode(x).clamp(-1, 1), info


def sample_image_flow(checkpoint: Path, config: dict[str, Any], options: dict[str, Any]) -> dict:
    """sample.py entry point for ``tarflow`` checkpoints: write a PNG grid, return a summary.

    ``options``: num, method, guidance, guidance_rule, class_label (int or None), seed, out,
    jacobi_threshold, jacobi_max_iter, device, progress.
    """
    device = options.get("device", "cpu")
    require_device(device)
    num = options.get("num", 64)
    if num < 1:
        raise ValueError(f"--num must be a positive number of samples, got {num}")
    torch.manual_seed(options.get("seed", 0))
    model = load_model(checkpoint, options.get("use_ema", True), kind="tarflow")[0].to(device)
    sampler = ImageFlowSampler(
        model,
        method=options.get("method", "auto"),
        jacobi_threshold=options.get("jacobi_threshold", DEFAULT_JACOBI_THRESHOLD),
        jacobi_max_iter=options.get("jacobi_max_iter"),
    )
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
    images, info = sampler.sample(
        num,
        y,
        generator=generator,
        guidance=guidance,
        guidance_rule=options.get("guidance_rule", "tarflow"),
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
