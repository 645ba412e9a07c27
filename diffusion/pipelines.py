"""Sampling: DDIM / DPM-Solver with classifier-free guidance, and diffusers pipelines.

References:
    Song, Meng, Ermon. Denoising Diffusion Implicit Models. ICLR 2021, arXiv:2010.02502.
    Lu, Zhou, Bao, Chen, Li, Zhu. DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
        Probabilistic Models. arXiv:2211.01095.
    Ho, Salimans. Classifier-Free Diffusion Guidance. arXiv:2207.12598.

The pipelines hold the whole model (``NormalAdaptedDiffusion`` / ``NormalAlignedDiffusion``) as
their one module, so ``save_pretrained`` / ``from_pretrained`` on a local folder keep swapped
norms (the model rebuilds them from its own config).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler

from .normal_maps import foreground_mask

__all__ = [
    "SAMPLERS",
    "NormalAdaptedPipeline",
    "NormalAlignedPipeline",
    "guided_sample",
    "sample_aligned_images",
    "sample_normal_maps",
]

SAMPLERS = ("ddim", "dpm")


def _sampling_scheduler(train_scheduler, sampler: str):
    if sampler == "ddim":
        return DDIMScheduler.from_config(train_scheduler.config)
    if sampler == "dpm":
        return DPMSolverMultistepScheduler.from_config(
            train_scheduler.config, algorithm_type="dpmsolver++"
        )
    raise ValueError(f"sampler {sampler!r} is unknown; choose one of: {', '.join(SAMPLERS)}")


@torch.no_grad()
def guided_sample(
    denoise: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor],
    train_scheduler,
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    steps: int,
    guidance_scale: float,
    sampler: str = "ddim",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    clip: bool = True,
) -> torch.Tensor:
    """Generic guided sampling: ``denoise(x, t, conditional)`` returns predicted noise.

    The guided noise is ``uncond + w (cond - uncond)``; ``w = 1`` skips the unconditional pass.
    The start noise is drawn on the CPU from ``generator`` so a seed gives the same samples on
    every device. ``clip`` clamps the result to [-1, 1] (pixels; latents are left as they are).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    scheduler = _sampling_scheduler(train_scheduler, sampler)
    scheduler.set_timesteps(steps, device=device)
    x = torch.randn(shape, generator=generator, dtype=dtype).to(device)
    x = x * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        tt = t.expand(shape[0]).to(device)
        inp = scheduler.scale_model_input(x, t)
        eps = denoise(inp, tt, True)
        if guidance_scale != 1.0:
            uncond = denoise(inp, tt, False)
            eps = uncond + guidance_scale * (eps - uncond)
        x = scheduler.step(eps, t, x).prev_sample
    return x.clamp(-1.0, 1.0) if clip else x


def _defaults(model, steps: int | None, guidance_scale: float | None,
              sampler: str | None) -> tuple[int, float, str]:
    """The model's own sampling settings (its config) for every one not given."""
    config = model.config
    return (
        config.sample_steps if steps is None else steps,
        config.guidance_scale if guidance_scale is None else guidance_scale,
        config.sampler if sampler is None else sampler,
    )


def sample_normal_maps(
    model, labels: torch.Tensor, generator: torch.Generator | None = None,
    steps: int | None = None, guidance_scale: float | None = None, sampler: str | None = None,
) -> torch.Tensor:
    """Normal maps in [-1, 1] ``(B, 3, H, W)`` from a NormalAdaptedDiffusion, one per label.

    ``steps``, ``guidance_scale`` and ``sampler`` default to the model's config. In latent mode
    the sampled latents are decoded by the model's autoencoder.
    """
    steps, guidance_scale, sampler = _defaults(model, steps, guidance_scale, sampler)
    was_training = model.training
    model.eval()
    labels = torch.as_tensor(labels, device=model.device)
    null = torch.full_like(labels, model.null_label)
    latent = model.vae is not None
    out = guided_sample(
        lambda x, t, cond: model.denoise(x, t, labels if cond else null),
        model.scheduler, (len(labels), *model.sample_shape), generator, steps, guidance_scale,
        sampler, model.device, model.dtype, clip=not latent,
    )
    if latent:
        out = model.decode(out).clamp(-1.0, 1.0)
    model.train(was_training)
    return out


def sample_aligned_images(
    model, normals: torch.Tensor, generator: torch.Generator | None = None,
    steps: int | None = None, guidance_scale: float | None = None, sampler: str | None = None,
) -> torch.Tensor:
    """Images in [-1, 1] from a NormalAlignedDiffusion, one per normal map ``(B, 3, H, W)``.

    ``normals`` in [-1, 1] (background -1); all-zero maps give unconditioned samples.
    ``steps``, ``guidance_scale`` and ``sampler`` default to the model's config. In latent mode
    the sampled latents are decoded by the model's autoencoder. A model with
    ``mask_background`` returns -1 (black) wherever the normal map is background.
    """
    steps, guidance_scale, sampler = _defaults(model, steps, guidance_scale, sampler)
    was_training = model.training
    model.eval()
    normals = normals.to(model.device, model.dtype)
    cond, null = model.condition(normals), model.condition(torch.zeros_like(normals))
    latent = model.vae is not None
    out = guided_sample(
        lambda x, t, c: model.denoise_condition(x, t, cond if c else null),
        model.scheduler, (len(normals), *model.sample_shape), generator, steps,
        guidance_scale, sampler, model.device, model.dtype, clip=not latent,
    )
    if latent:
        out = model.decode(out).clamp(-1.0, 1.0)
    if model.config.mask_background:
        out = torch.where(foreground_mask((normals + 1.0) / 2.0).unsqueeze(1), out, -1.0)
    model.train(was_training)
    return out


class NormalAdaptedPipeline(DiffusionPipeline):
    """Prompt or label -> normal maps. ``pipe(prompt="front view, full body", num=4)``."""

    def __init__(self, model) -> None:
        super().__init__()
        self.register_modules(model=model)

    @torch.no_grad()
    def __call__(
        self, prompt: str | list[str] | None = None, labels: torch.Tensor | None = None,
        num: int = 1, generator: torch.Generator | None = None, steps: int | None = None,
        guidance_scale: float | None = None, sampler: str | None = None,
    ) -> torch.Tensor:
        from .data import prompt_to_label

        if labels is None:
            if prompt is None:
                raise ValueError("give a prompt (e.g. 'front view, full body') or labels")
            prompts = [prompt] * num if isinstance(prompt, str) else list(prompt)
            labels = torch.tensor([prompt_to_label(p) for p in prompts])
        return sample_normal_maps(self.model, labels, generator, steps, guidance_scale, sampler)


class NormalAlignedPipeline(DiffusionPipeline):
    """Normal maps in [-1, 1] -> images in [-1, 1] that follow them."""

    def __init__(self, model) -> None:
        super().__init__()
        self.register_modules(model=model)

    @torch.no_grad()
    def __call__(
        self, normals: torch.Tensor, generator: torch.Generator | None = None,
        steps: int | None = None, guidance_scale: float | None = None, sampler: str | None = None,
    ) -> torch.Tensor:
        return sample_aligned_images(self.model, normals, generator, steps, guidance_scale, sampler)
