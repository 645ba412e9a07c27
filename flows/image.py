r"""TransformerFlow: TARFlow / STARFlow image flows (pixels or autoencoder latents).

References:
    Zhai, Zhang, Gu, et al. Normalizing Flows are Capable Generative Models (TARFlow).
    arXiv:2412.06329, 2024.
    Gu, Chen, Zhai, et al. STARFlow: Scaling Latent Normalizing Flows for High-resolution Image
    Synthesis. arXiv:2506.06276, 2025.
    Ho, Salimans. Classifier-Free Diffusion Guidance. arXiv:2207.12598, 2022.
    Efron. Tweedie's Formula and Selection Bias. JASA 2011 (the one-step denoiser).
    Theis, van den Oord, Bethge. A note on the evaluation of generative models.
    arXiv:1511.01844, 2015 (uniform dequantisation, bits per dimension).

The model is a stack of :class:`flows.autoregressive.AutoregressiveBlock` over the patch tokens
of an image (pixels in [-1, 1], or latents of a local diffusers ``AutoencoderKL`` times a
scale). Blocks alternate identity and reversed token order. ``forward`` maps data to noise
(``z``, total log-determinant in nats); ``reverse`` is its exact inverse, each block solved by
the :class:`~flows.jacobi.JacobiSolver` it is given (sequential decoding or Jacobi). Choosing
the method, drawing noise and decoding are the sampler's job
(:class:`flows.sampling.ImageFlowSampler`). Sampling works in the noisy space the model was
trained on; ``denoise`` is the separate one-step Tweedie update x + sigma^2 grad log p(x).

Example:
    >>> import torch
    >>> from flows.image import TransformerFlow
    >>> flow = TransformerFlow(image_size=8, in_channels=1, patch_size=2, width=32,
    ...                        num_heads=2, layers_per_block=[1, 1])
    >>> z, logdet = flow(torch.rand(2, 1, 8, 8) * 2 - 1)
    >>> z.shape, logdet.shape
    (torch.Size([2, 1, 8, 8]), torch.Size([2]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from core.checks import require_positive
from core.latent import load_local_vae
from flows.autoregressive import GUIDANCE_RULES, AutoregressiveBlock, Permutation
from flows.jacobi import JacobiSolver, JacobiStats
from flows.sampling import ImageFlowSampler
from flows.score import flow_score

__all__ = [
    "LN_128",
    "TransformerFlow",
    "dequantise",
    "nats_to_bits_per_dim",
    "normal_log_prob",
    "patchify",
    "unpatchify",
]

LN_128 = math.log(128.0)  # log-Jacobian per dim of [0, 256) -> [-1, 1)


def dequantise(
    pixels: torch.Tensor, encoded: torch.Tensor, how: str, noise_sigma: float
) -> torch.Tensor:
    """Training input of a flow: "uniform", 2 (x_int + u) / 256 - 1 of 8-bit ``pixels`` in
    [-1, 1]; "gaussian", ``encoded`` (the pixels in the flow's space) + noise_sigma eps."""
    if how == "uniform":
        x_int = torch.round((pixels + 1) * 127.5).clamp(0, 255)
        return 2 * (x_int + torch.rand_like(pixels)) / 256 - 1
    return encoded + noise_sigma * torch.randn_like(encoded)


def normal_log_prob(z: torch.Tensor, logdet: torch.Tensor) -> torch.Tensor:
    """log p(x) per sample from a flow's (z, log|det dz/dx|) under the standard normal prior."""
    flat = z.flatten(1)
    return logdet - 0.5 * (flat.pow(2).sum(1) + flat.shape[1] * math.log(2 * math.pi))


def nats_to_bits_per_dim(nll: torch.Tensor, pixels: bool) -> torch.Tensor:
    """Bits/dim of an NLL in nats per dim: (nll + ln 128) / ln 2 for 8-bit pixels mapped to
    [-1, 1) (the ln 128 is that map's Jacobian per dim), nll / ln 2 in a latent space."""
    return (nll + (LN_128 if pixels else 0.0)) / math.log(2)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, (H/p)(W/p), C p^2), patches in row-major order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def quantise(x: torch.Tensor, levels: int | None) -> torch.Tensor:
    """Round images in [-1, 1] to ``levels`` evenly spaced grey levels (None: unchanged).

    A flow of discrete data models a dequantised relaxation; its samples are mapped back to the
    data's alphabet, as 8-bit models round to 256 levels (scikit-learn digits have 17).
    """
    if levels is None:
        return x
    steps = levels - 1
    return ((x.clamp(-1, 1) + 1) * steps / 2).round() * 2 / steps - 1


def check_levels(levels: int | None, vae: str | None = None) -> None:
    """Refuse a ``levels`` setting that is not null or 2..65536, or one given with a ``vae``."""
    if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int)
                               or not 2 <= levels <= 65536):
        raise ValueError(f"levels must be null or an integer number of grey levels in 2..65536, "
                         f"got {levels!r}")
    if levels is not None and vae is not None:
        raise ValueError("levels (rounding to grey levels) needs pixel mode (vae=None)")


def unpatchify(tokens: torch.Tensor, channels: int, size: int, patch: int) -> torch.Tensor:
    """Inverse of :func:`patchify` for square images of side ``size``."""
    b, g = tokens.shape[0], size // patch
    x = tokens.reshape(b, g, g, channels, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels, size, size)


class TransformerFlow(ModelMixin, ConfigMixin):
    r"""A transformer autoregressive flow on image patches (TARFlow, or STARFlow options).

    Arguments:
        image_size: side of the (square) input image in pixels.
        in_channels: image channels.
        patch_size: patch side p on the flow's grid (pixels, or latents in latent mode).
        width, num_heads, mlp_ratio: the transformer of every block.
        layers_per_block: transformer depth of each block in forward (data -> noise) order;
            deep-shallow is e.g. ``[2, 2, 2, 8]``.
        norm, norm_placement, mix_alpha, activation, dropout: passed to norms' transformer.
        noise_sigma: std of the Gaussian noise augmentation (in the flow's space).
        dequantization: "gaussian" (x + sigma eps) or "uniform" (x = 2 (x_int + u)/256 - 1,
            pixel mode only; gives true bits/dim).
        num_classes: 0 for an unconditional model; otherwise class labels enter every block as
            a one-token prefix (index ``num_classes`` is the "no label" token of CFG).
        condition_dropout: probability of dropping the label in training (classifier-free guidance).
        start_token, positions, affine: STARFlow (True, "rope", "softplus") or TARFlow
            (False, "learned", "exp").
        vae: path of a local diffusers AutoencoderKL folder (latent mode) or None (pixels).
        latent_scale: multiplies the latents (default: the autoencoder's ``scaling_factor``).
        levels: grey levels of the data (pixel mode); samples are rounded to them (null: not
            rounded; 17 for scikit-learn digits). A sampling choice: training never reads it.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        image_size: int = 16,
        in_channels: int = 1,
        patch_size: int = 2,
        width: int = 128,
        num_heads: int = 4,
        layers_per_block: Sequence[int] = (2, 2, 2, 2),
        mlp_ratio: float = 4.0,
        norm: str = "layernorm",
        norm_placement: str = "pre",
        mix_alpha: float = 0.25,
        activation: str = "gelu",
        dropout: float = 0.0,
        noise_sigma: float = 0.1,
        dequantization: str = "gaussian",
        num_classes: int = 0,
        condition_dropout: float = 0.1,
        start_token: bool = False,
        positions: str = "learned",
        affine: str = "exp",
        vae: str | None = None,
        latent_scale: float | None = None,
        levels: int | None = None,
    ) -> None:
        super().__init__()
        check_levels(levels, vae)
        require_positive("tarflow", image_size=image_size, in_channels=in_channels,
                         patch_size=patch_size, width=width, num_heads=num_heads,
                         layers_per_block=layers_per_block, mlp_ratio=mlp_ratio)
        if dequantization not in ("gaussian", "uniform"):
            raise ValueError(f"dequantization {dequantization!r} is unknown; use gaussian/uniform")
        if dequantization == "uniform" and vae is not None:
            raise ValueError("uniform dequantisation needs pixel mode (vae=None)")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        # The autoencoder stays out of the state dict (object.__setattr__ skips nn.Module's
        # registration): it is frozen and loaded from its own folder.
        object.__setattr__(self, "_vae", load_local_vae(vae) if vae is not None else None)
        grid_size, channels = image_size, in_channels
        if vae is not None:
            vae_config = self._vae.config
            grid_size = image_size // 2 ** (len(vae_config.block_out_channels) - 1)
            channels = vae_config.latent_channels
            self.latent_scale = float(
                latent_scale if latent_scale is not None else vae_config.scaling_factor
            )
        if grid_size % patch_size:
            raise ValueError(f"patch size {patch_size} does not divide the grid size {grid_size}")
        if not layers_per_block:
            raise ValueError("layers_per_block must list at least one block")
        self.grid_size, self.channels = grid_size, channels
        self.num_tokens = (grid_size // patch_size) ** 2
        self.token_dim = channels * patch_size**2
        prefix = 1 if num_classes else 0
        self.blocks = nn.ModuleList(
            AutoregressiveBlock(
                self.token_dim,
                self.num_tokens,
                width,
                depth,
                num_heads,
                permutation=(Permutation.identity if i % 2 == 0 else Permutation.reverse)(
                    self.num_tokens
                ),
                prefix_len=prefix,
                start_token=start_token,
                positions=positions,
                affine=affine,
                norm=norm,
                norm_placement=norm_placement,
                mlp_ratio=mlp_ratio,
                mix_alpha=mix_alpha,
                activation=activation,
                dropout=dropout,
            )
            for i, depth in enumerate(layers_per_block)
        )
        self.class_embed = nn.ModuleList(
            nn.Embedding(num_classes + 1, width) for _ in layers_per_block if num_classes
        )
        for embed in self.class_embed:
            nn.init.normal_(embed.weight, std=0.02)

    # ------------------------------------------------------------------ shapes
    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of one sample in the flow's space (latents in latent mode)."""
        return (self.channels, self.grid_size, self.grid_size)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of one decoded image."""
        size = self.config.image_size
        return (self.config.in_channels, size, size)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"expected (B, {', '.join(map(str, self.sample_shape))}), got {tuple(x.shape)}"
            )
        return patchify(x, self.config.patch_size)

    def _image(self, tokens: torch.Tensor) -> torch.Tensor:
        return unpatchify(tokens, self.channels, self.grid_size, self.config.patch_size)

    def _prefix(self, block: int, y: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if not self.config.num_classes:
            return None
        embed = self.class_embed[block]
        device = embed.weight.device  # not self.device: that walks every module, every call
        if y is None:  # unconditional: the "no label" token
            y = torch.full((batch,), self.config.num_classes, dtype=torch.long, device=device)
        return embed(y.to(device)).unsqueeze(1)

    def batch_limits(self) -> dict[str, int]:
        """Training batches' labels, checked by the trainer's collate (trainers.protocol)."""
        return {"y": self.config.num_classes} if self.config.num_classes else {}

    def check_condition(self, y: torch.Tensor | None) -> None:
        """Raise ValueError unless ``y`` is None or holds classes 0..num_classes-1."""
        if y is None:
            return
        n = self.config.num_classes
        if n == 0:
            raise ValueError("this model is unconditional (num_classes=0); it takes no class label")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n):
            raise ValueError(f"class labels must lie in 0..{n - 1}, got {y.unique().tolist()}")

    # ------------------------------------------------------------------ latents
    @property
    def vae(self) -> Any:
        return self._vae

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the flow's space (identity in pixel mode)."""
        if self._vae is None:
            return images
        vae = self._vae.to(images.device, images.dtype)
        with torch.no_grad():
            return vae.encode(images).latent_dist.mean * self.latent_scale

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """The flow's space -> images in [-1, 1] (pixel mode: rounded to ``levels`` if set)."""
        if self._vae is None:
            return quantise(x, self.config.levels)
        vae = self._vae.to(x.device, x.dtype)
        with torch.no_grad():
            return vae.decode(x / self.latent_scale).sample

    # ------------------------------------------------------------------ flow
    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) in the flow's space -> (z like x, total log|det dz/dx| (B,) in nats)."""
        tokens = self._tokens(x)
        logdet = tokens.new_zeros(tokens.shape[0])
        for i, block in enumerate(self.blocks):
            tokens, block_logdet = block(tokens, self._prefix(i, y, tokens.shape[0]))
            logdet = logdet + block_logdet
        return self._image(tokens), logdet

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) per sample in nats (standard normal prior)."""
        return normal_log_prob(*self(x, y))

    @torch.no_grad()
    def reverse(
        self,
        z: torch.Tensor,
        y: torch.Tensor | None = None,
        solvers: JacobiSolver | Sequence[JacobiSolver] | None = None,
        guidance: float = 0.0,
        guidance_rule: str = "tarflow",
        progress: bool = False,
    ) -> tuple[torch.Tensor, list[JacobiStats]]:
        """The exact inverse of ``forward`` (no denoising): z (B, C, H, W) -> (x, stats).

        Arguments:
            solvers: how each block is inverted: one :class:`~flows.jacobi.JacobiSolver` for
                every block or one per block in forward order (default: sequential decoding).
                :class:`flows.sampling.ImageFlowSampler` picks them (``method="auto"``).
            guidance: classifier-free guidance weight w (needs a conditional model and y);
                ``guidance_rule`` "tarflow" (extrapolation) or "starflow" (Gaussian rule).
            progress: a progress bar over the blocks.

        Returns x like z and what each block's solve spent (forward order).
        """
        if guidance_rule not in GUIDANCE_RULES:
            raise ValueError(
                f"guidance rule {guidance_rule!r} is unknown; choose one of: "
                + ", ".join(GUIDANCE_RULES)
            )
        self.check_condition(y)
        if guidance and (not self.config.num_classes or y is None):
            raise ValueError("guidance needs a class-conditional model and class labels y")
        if solvers is None or isinstance(solvers, JacobiSolver):
            solvers = [solvers or JacobiSolver.sequential()] * len(self.blocks)
        if len(solvers) != len(self.blocks):
            raise ValueError(f"{len(solvers)} solvers given for {len(self.blocks)} blocks")
        tokens = self._tokens(z)
        batch = tokens.shape[0]
        stats: list[JacobiStats] = [JacobiStats() for _ in self.blocks]
        order = list(reversed(range(len(self.blocks))))
        if progress:
            from tqdm.auto import tqdm

            order = tqdm(order, desc="reverse", unit="block", leave=False)
        for i in order:
            cond = self._prefix(i, y, batch)
            uncond = self._prefix(i, None, batch) if guidance else None
            tokens, stats[i] = self.blocks[i].reverse(
                tokens, cond, uncond, guidance, guidance_rule, solver=solvers[i]
            )
        return self._image(tokens), stats

    def denoise(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """One Tweedie step x + sigma^2 grad_x log p(x) with the model's own score."""
        sigma = self.config.noise_sigma
        if sigma == 0:
            return x
        return x.detach() + sigma**2 * flow_score(lambda v: self.log_prob(v, y), x)

    # ------------------------------------------------------------------ training
    def nll_per_dim(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Negative log-likelihood per dimension in nats, per sample."""
        return -self.log_prob(x, y) / x[0].numel()

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Flow NLL per dim in nats ("loss") and bits/dim.

        ``bits_per_dim`` = (nll + ln 128) / ln 2 maps the density on [-1, 1) back to 8-bit
        pixels; it is a true discrete bound with ``dequantization="uniform"`` and the noisy-data
        analogue with Gaussian noise. In latent mode it is nll / ln 2 per latent dim.
        """
        images = batch["x"].to(self.device, self.dtype)
        y = batch.get("y")
        if y is not None and self.config.num_classes:
            y = y.to(self.device).long().clone()
            if self.training and self.config.condition_dropout > 0:
                drop = torch.rand(y.shape, device=y.device) < self.config.condition_dropout
                y[drop] = self.config.num_classes
        else:
            y = None
        c = self.config
        x = dequantise(images, self.encode(images), c.dequantization, c.noise_sigma)
        nll = self.nll_per_dim(x, y).mean()
        return {"loss": nll, "bits_per_dim": nats_to_bits_per_dim(nll.detach(), self._vae is None)}

    @torch.no_grad()
    def bits_per_dim(self, images: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Per-image bits/dim of 8-bit images (given in [-1, 1]) with uniform dequantisation."""
        if self._vae is not None:
            raise ValueError("bits/dim of pixels needs pixel mode (vae=None)")
        x = dequantise(images, images, "uniform", 0.0)
        return nats_to_bits_per_dim(self.nll_per_dim(x, y), pixels=True)

    # ------------------------------------------------------------------ trainer hook
    def sample_for_logging(
        self, num: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Images (num, C, H, W) in [0, 1] for the trainer's periodic sampling hook."""
        return ImageFlowSampler(self).sample_for_logging(num, generator)

