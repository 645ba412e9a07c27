"""Normal-adapted and normal-aligned diffusion models (diffusers UNets, pixels or latents).

References:
    Huang, Huang, Chen, Xu, Guo. HumanNorm: Learning Normal Diffusion Model for High-quality and
        Realistic 3D Human Generation. CVPR 2024, arXiv:2310.01406 (normal-adapted and
        normal-aligned diffusion).
    Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. NeurIPS 2020, arXiv:2006.11239.
    Ho, Salimans. Classifier-Free Diffusion Guidance. arXiv:2207.12598 (label / condition
        dropout, guided sampling).
    Zhang, Rao, Agrawala. Adding Conditional Control to Text-to-Image Diffusion Models.
        ICCV 2023, arXiv:2302.05543 (ControlNet).
    Rombach, Blattmann, Lorenz, Esser, Ommer. High-Resolution Image Synthesis with Latent
        Diffusion Models. CVPR 2022, arXiv:2112.10752 (latent space of a frozen autoencoder,
        latents scaled by the autoencoder's scaling factor).

    Salimans, Ho. Progressive Distillation for Fast Sampling of Diffusion Models. ICLR 2022,
        arXiv:2202.00512 (v-prediction).
    Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. ICML 2021,
        arXiv:2102.09672 (the cosine noise schedule).
    Hoogeboom, Heek, Salimans. simple diffusion: End-to-end diffusion for high resolution
        images. ICML 2023, arXiv:2301.11093 (a space-to-depth patch layer in pixel space).

Both models follow ``trainers.protocol``: ``loss(batch)`` is the DDPM loss (by default linear
betas 1e-4..0.02, 1000 steps, epsilon prediction; ``beta_schedule`` and ``prediction_type``
choose the cosine schedule and v- or x0-prediction) and ``sample_for_logging`` draws a few
samples with DDIM. Data live in [-1, 1]. ``norm`` swaps every GroupNorm of the networks for that
map norm of ``norms/``. ``patch_size`` p > 1 runs the UNet on ``pixel_unshuffle``-d inputs
(p x p pixels -> 3 p^2 channels at 1/p of the side), which cuts the cost of the full-resolution
convolutions by about p^2 while the output keeps every pixel.
``NormalAdaptedDiffusion(vae="path/to/folder")`` works in the latent space of a local, frozen
diffusers ``AutoencoderKL`` (loaded offline; kept out of the state dict and the optimizer).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, DDPMScheduler, UNet2DConditionModel, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from core.checks import require_positive
from core.latent import LatentSpace

from .data import NUM_LABELS
from .norm_swap import swap_norms

__all__ = ["NormalAdaptedDiffusion", "NormalAlignedDiffusion", "training_scheduler"]


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "squaredcos_cap_v2")


def training_scheduler(
    num_train_timesteps: int = 1000, clip_sample: bool = True,
    prediction_type: str = "epsilon", beta_schedule: str = "linear",
) -> DDPMScheduler:
    """The DDPM noise schedule a model trains with (and its sampling schedulers copy).

    ``beta_schedule``: ``linear`` (betas 1e-4..0.02) or ``squaredcos_cap_v2`` (cosine);
    ``prediction_type``: what the network predicts, ``epsilon`` (the noise), ``v_prediction``
    (sqrt(abar) noise - sqrt(1 - abar) x0) or ``sample`` (x0). ``clip_sample`` clips predicted
    clean samples to [-1, 1] when sampling (pixels); latents are not bounded, so latent models
    turn it off.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction_type!r} is unknown; choose one of: "
                         f"{', '.join(PREDICTION_TYPES)}")
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule {beta_schedule!r} is unknown; choose one of: "
                         f"{', '.join(BETA_SCHEDULES)}")
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_start=1e-4, beta_end=0.02,
        beta_schedule=beta_schedule, prediction_type=prediction_type, clip_sample=clip_sample,
    )


def _check_sizes(
    resolution: int, block_out_channels: tuple[int, ...], groups: int, patch_size: int = 1
) -> int:
    """The UNet's side (``resolution / patch_size``) after checking that every size fits."""
    if patch_size < 1 or resolution % patch_size:
        raise ValueError(
            f"patch_size {patch_size} must be >= 1 and divide the side {resolution}"
        )
    size, levels = resolution // patch_size, len(block_out_channels)
    if size % (2 ** (levels - 1)):
        raise ValueError(
            f"side {size} (resolution / patch_size) must be divisible by 2^(levels - 1) = "
            f"{2 ** (levels - 1)} for block_out_channels {list(block_out_channels)}"
        )
    bad = [c for c in block_out_channels if c % groups]
    if bad:
        raise ValueError(
            f"norm_num_groups {groups} must divide every channel count; {bad} are not divisible"
        )
    return size


def _check_sampling(sampler: str, steps: int) -> None:
    from .pipelines import SAMPLERS

    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is unknown; choose one of: {', '.join(SAMPLERS)}")
    if steps < 1:
        raise ValueError(f"sample_steps must be >= 1, got {steps}")


def _head_dim(block_out_channels: tuple[int, ...], attention_levels: int) -> int:
    # One head size serves every attention level, so it must fit the narrowest of them.
    return min(32, *block_out_channels[len(block_out_channels) - max(attention_levels, 1):])


def _block_types(levels: int, attention_levels: int, cross: bool) -> tuple[list, list]:
    attn_down = "CrossAttnDownBlock2D" if cross else "AttnDownBlock2D"
    attn_up = "CrossAttnUpBlock2D" if cross else "AttnUpBlock2D"
    down = ["DownBlock2D" if i < levels - attention_levels else attn_down for i in range(levels)]
    up = [attn_up if i < attention_levels else "UpBlock2D" for i in range(levels)]
    return down, up


def _diffusion_loss(scheduler: DDPMScheduler, x0: torch.Tensor, predict) -> torch.Tensor:
    """Mean squared error of the network's prediction of the scheduler's ``prediction_type``."""
    noise = torch.randn_like(x0)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
    noisy = scheduler.add_noise(x0, noise, t)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(x0, noise, t)
    else:
        target = x0
    return F.mse_loss(predict(noisy, t), target)


def _unpatch(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    return F.pixel_shuffle(x, patch_size) if patch_size > 1 else x


def _patch(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    return F.pixel_unshuffle(x, patch_size) if patch_size > 1 else x


def _drop(keep_prob: float, batch: int, device: torch.device, training: bool) -> torch.Tensor:
    if not training or keep_prob >= 1.0:
        return torch.ones(batch, dtype=torch.bool, device=device)
    return torch.rand(batch, device=device) < keep_prob


class _LatentSpace:
    """Pixels, or the latent space of a local frozen AutoencoderKL (shared by both models).

    The autoencoder (:class:`core.latent.LatentSpace`) stays out of the state dict and the
    parameters (``object.__setattr__`` skips nn.Module registration): frozen, loaded from its
    own folder, never optimized. The config keeps the folder's absolute path, so
    ``from_pretrained`` loads it again.
    """

    def _init_space(
        self, resolution: int, block_out_channels: tuple[int, ...], layers_per_block: int,
        norm_num_groups: int, patch_size: int, sampler: str, sample_steps: int,
        condition_dropout: float, vae: str | None, latent_scale: float | None,
    ) -> tuple[tuple[int, ...], int, int]:
        """The checks both models share, then ``(block_out_channels, UNet side, UNet channels)``
        of the pixels or latents, after ``patch_size`` unshuffling."""
        require_positive(type(self).__name__, resolution=resolution,
                         block_out_channels=list(block_out_channels),
                         layers_per_block=layers_per_block, norm_num_groups=norm_num_groups,
                         patch_size=patch_size)
        block_out_channels = tuple(block_out_channels)
        _check_sampling(sampler, sample_steps)
        if not 0.0 <= condition_dropout < 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1), got {condition_dropout}")
        size, channels = self._init_latent(vae, latent_scale, resolution)
        size = _check_sizes(size, block_out_channels, norm_num_groups, patch_size)
        return block_out_channels, size, channels * patch_size**2

    def _init_latent(
        self, vae: str | None, latent_scale: float | None, resolution: int
    ) -> tuple[int, int]:
        space = LatentSpace(vae, latent_scale) if vae is not None else None
        object.__setattr__(self, "_latent", space)
        size, channels = resolution, 3
        if space is not None:
            self.register_to_config(vae=str(space.folder))
            if space.image_channels != 3:
                raise ValueError(
                    f"the autoencoder must take 3-channel images, "
                    f"got in_channels={space.image_channels}"
                )
            size, channels = space.latent_side(resolution), space.channels
        self.sample_shape = (channels, size, size)
        return size, channels

    @property
    def latent_scale(self) -> float:
        """What latents are multiplied by (1.0 in pixels)."""
        return 1.0 if self._latent is None else self._latent.scale

    @property
    def vae(self) -> Any:
        """The frozen AutoencoderKL (latent mode) or None (pixels)."""
        return None if self._latent is None else self._latent.autoencoder

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the UNet's space (scaled latent means; identity in pixels)."""
        return images if self._latent is None else self._latent.encode(images)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """The UNet's space -> images (about [-1, 1]; identity in pixels)."""
        return x if self._latent is None else self._latent.decode(x)


class NormalAdaptedDiffusion(_LatentSpace, ModelMixin, ConfigMixin):
    """UNet2DModel (pixels, or latents with ``vae``) generating normal maps from (view, framing)
    labels.

    Labels (``batch["y"]``, see ``diffusion.data``) enter through the UNet's class embedding;
    label ``num_labels`` is the null label that label dropout (``condition_dropout``) trains for
    classifier-free guidance.

    Arguments:
        resolution: image side; divisible by 2^(len(block_out_channels) - 1).
        block_out_channels: UNet widths per level.
        layers_per_block: resnets per level.
        attention_levels: how many of the deepest levels carry self-attention.
        norm_num_groups: GroupNorm groups (passed on to norms with groups).
        norm: map norm replacing every GroupNorm (``norms.available_norms("maps")``).
        num_labels: number of conditioning labels (12 = 4 views x 3 framings).
        condition_dropout: probability of the null label during training.
        num_train_timesteps: DDPM steps.
        guidance_scale, sample_steps, sampler: the sampling defaults (``ddim`` or ``dpm``).
        prediction_type, beta_schedule: see :func:`training_scheduler`.
        patch_size: the UNet sees ``pixel_unshuffle(x, patch_size)`` (1: the pixels as they are).
        vae: folder of a local diffusers AutoencoderKL (latent mode) or None (pixels). The UNet
            then works on latents of side ``resolution / 2^(len(vae block_out_channels) - 1)``
            with the autoencoder's latent channels; the autoencoder is frozen and stays out of
            the state dict (the config keeps its absolute path and loading reads it again).
        latent_scale: multiplies the latents (default: the autoencoder's ``scaling_factor``).
    """

    @register_to_config
    def __init__(
        self,
        resolution: int = 32,
        block_out_channels: tuple[int, ...] = (32, 64, 64),
        layers_per_block: int = 1,
        attention_levels: int = 1,
        norm_num_groups: int = 8,
        norm: str = "groupnorm",
        num_labels: int = NUM_LABELS,
        condition_dropout: float = 0.1,
        num_train_timesteps: int = 1000,
        guidance_scale: float = 2.0,
        sample_steps: int = 25,
        sampler: str = "ddim",
        prediction_type: str = "epsilon",
        beta_schedule: str = "linear",
        patch_size: int = 1,
        vae: str | None = None,
        latent_scale: float | None = None,
    ) -> None:
        super().__init__()
        block_out_channels, size, channels = self._init_space(
            resolution, block_out_channels, layers_per_block, norm_num_groups, patch_size,
            sampler, sample_steps, condition_dropout, vae, latent_scale)
        down, up = _block_types(len(block_out_channels), attention_levels, cross=False)
        self.unet = UNet2DModel(
            sample_size=size, in_channels=channels, out_channels=channels,
            block_out_channels=block_out_channels, layers_per_block=layers_per_block,
            down_block_types=down, up_block_types=up, norm_num_groups=norm_num_groups,
            attention_head_dim=_head_dim(block_out_channels, attention_levels),
            num_class_embeds=num_labels + 1,
        )
        swap_norms(self.unet, norm)
        self.scheduler = training_scheduler(
            num_train_timesteps, self._latent is None, prediction_type, beta_schedule
        )

    @property
    def null_label(self) -> int:
        return self.config.num_labels

    def batch_limits(self) -> dict[str, int]:
        """Training batches' labels, checked by the trainer's collate (trainers.protocol)."""
        return {"y": self.config.num_labels}

    def denoise(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The network's prediction (``prediction_type``) for noisy maps ``x`` at timesteps
        ``t`` given ``labels``."""
        p = self.config.patch_size
        return _unpatch(self.unet(_patch(x, p), t, class_labels=labels).sample, p)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x0 = self.encode(batch["x"])
        labels = batch.get("y")
        if labels is None:
            labels = torch.full((x0.shape[0],), self.null_label, device=x0.device)
        keep = _drop(1.0 - self.config.condition_dropout, x0.shape[0], x0.device, self.training)
        labels = torch.where(keep, labels.to(x0.device), torch.full_like(labels, self.null_label))
        loss = _diffusion_loss(self.scheduler, x0, lambda xt, t: self.denoise(xt, t, labels))
        return {"loss": loss}

    @torch.no_grad()
    def sample_for_logging(self, num: int, generator: torch.Generator) -> torch.Tensor:
        from .pipelines import sample_normal_maps

        labels = torch.arange(num) % self.config.num_labels
        x = sample_normal_maps(self, labels, generator=generator)
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


class NormalAlignedDiffusion(_LatentSpace, ModelMixin, ConfigMixin):
    """Image diffusion conditioned on a normal map (channel concatenation and/or ControlNet).

    The base network is a UNet2DConditionModel whose cross-attention reads one learned token
    (no text encoder: CLIP would need hub weights). ``conditioning``:

    - ``"concat"``: the normal map is concatenated to the noisy image (in_channels = 6);
    - ``"controlnet"``: a ``ControlNetModel.from_unet`` copy reads the normal map through a
      conditioning embedding that keeps the full resolution (one level, no 8x downsampling);
    - ``"both"``.

    With probability ``condition_dropout`` the normal map is replaced by zeros (the null
    condition) so sampling can guide on it. ``batch["x"]`` is the normal map in [-1, 1] (the
    background at -1), ``batch["color"]`` the target image in [-1, 1].

    With ``vae`` (a local AutoencoderKL folder; ``latent_scale`` as for the normal-adapted model)
    the UNet denoises latents of the image, and the normal map enters through the same frozen
    encoder (its scaled latents, like InstructPix2Pix's image condition), both for concatenation
    and as the ControlNet condition; the null condition is the encoding of the all-zero map.

    ``prediction_type``, ``beta_schedule`` and ``patch_size`` mean what they mean for
    :class:`NormalAdaptedDiffusion` (with patches, image and condition are both unshuffled).
    ``mask_background``: sampling paints the background of the condition (its black pixels) black
    in the output, as in the training images, instead of leaving the network's near-black there.
    """

    @register_to_config
    def __init__(
        self,
        resolution: int = 32,
        block_out_channels: tuple[int, ...] = (32, 64, 64),
        layers_per_block: int = 1,
        attention_levels: int = 1,
        norm_num_groups: int = 8,
        norm: str = "groupnorm",
        conditioning: str = "concat",
        cross_attention_dim: int = 32,
        conditioning_channels: tuple[int, ...] = (16,),
        condition_dropout: float = 0.1,
        num_train_timesteps: int = 1000,
        guidance_scale: float = 2.0,
        sample_steps: int = 25,
        sampler: str = "ddim",
        prediction_type: str = "epsilon",
        beta_schedule: str = "linear",
        patch_size: int = 1,
        mask_background: bool = False,
        vae: str | None = None,
        latent_scale: float | None = None,
    ) -> None:
        super().__init__()
        block_out_channels, size, channels = self._init_space(
            resolution, block_out_channels, layers_per_block, norm_num_groups, patch_size,
            sampler, sample_steps, condition_dropout, vae, latent_scale)
        if conditioning not in ("concat", "controlnet", "both"):
            raise ValueError(
                f"conditioning {conditioning!r} is unknown; choose one of: concat, controlnet, both"
            )
        down, up = _block_types(len(block_out_channels), attention_levels, cross=True)
        self.concat = conditioning in ("concat", "both")
        self.unet = UNet2DConditionModel(
            sample_size=size, in_channels=2 * channels if self.concat else channels,
            out_channels=channels,
            block_out_channels=block_out_channels, layers_per_block=layers_per_block,
            down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2DCrossAttn",
            norm_num_groups=norm_num_groups, cross_attention_dim=cross_attention_dim,
            attention_head_dim=_head_dim(block_out_channels, attention_levels),
        )
        self.controlnet: ControlNetModel | None = None
        if conditioning in ("controlnet", "both"):
            self.controlnet = ControlNetModel.from_unet(
                self.unet, conditioning_embedding_out_channels=tuple(conditioning_channels),
                load_weights_from_unet=True, conditioning_channels=channels,
            )
            swap_norms(self.controlnet, norm)
        swap_norms(self.unet, norm)
        self.token = nn.Parameter(torch.randn(1, 1, cross_attention_dim) * 0.02)
        self.scheduler = training_scheduler(
            num_train_timesteps, self._latent is None, prediction_type, beta_schedule
        )

    def condition(self, normals: torch.Tensor) -> torch.Tensor:
        """Normal maps in [-1, 1] -> the condition the networks read (latents in latent mode)."""
        return self.encode(normals)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        """The network's prediction (``prediction_type``) for noisy images ``x`` given normal
        maps (zeros = no condition)."""
        return self.denoise_condition(x, t, self.condition(normals))

    def denoise_condition(
        self, x: torch.Tensor, t: torch.Tensor, normals: torch.Tensor
    ) -> torch.Tensor:
        """``denoise`` with the condition already mapped by ``condition`` (sampling reuses it)."""
        p = self.config.patch_size
        x, normals = _patch(x, p), _patch(normals, p)
        tokens = self.token.to(x.dtype).expand(x.shape[0], -1, -1)
        inp = torch.cat([x, normals], dim=1) if self.concat else x
        extra: dict[str, Any] = {}
        if self.controlnet is not None:
            down_res, mid_res = self.controlnet(
                inp, t, encoder_hidden_states=tokens, controlnet_cond=normals,
                return_dict=False,
            )
            extra = {"down_block_additional_residuals": down_res,
                     "mid_block_additional_residual": mid_res}
        return _unpatch(self.unet(inp, t, encoder_hidden_states=tokens, **extra).sample, p)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x0, normals = self.encode(batch["color"]), batch["x"]
        keep = _drop(1.0 - self.config.condition_dropout, x0.shape[0], x0.device, self.training)
        normals = normals * keep.to(normals.dtype)[:, None, None, None]
        loss = _diffusion_loss(self.scheduler, x0, lambda xt, t: self.denoise(xt, t, normals))
        return {"loss": loss}

    @torch.no_grad()
    def sample_for_logging(self, num: int, generator: torch.Generator) -> torch.Tensor:
        """Samples for a fixed grid of rendered normal maps (normal map left, image right)."""
        from .data import NormalMapDataset
        from .pipelines import sample_aligned_images

        data = NormalMapDataset(self.config.resolution, num_samples=num, seed=12345, flip=False)
        normals = data.data["x"].to(self.device, self.dtype)
        x = sample_aligned_images(self, normals, generator=generator)
        return ((torch.cat([normals, x], dim=-1) + 1.0) / 2.0).clamp(0.0, 1.0)
