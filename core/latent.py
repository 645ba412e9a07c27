"""The latent space of a local, frozen diffusers AutoencoderKL: images <-> scaled latents.

References:
    Rombach, Blattmann, Lorenz, Esser, Ommer. High-Resolution Image Synthesis with Latent
        Diffusion Models. CVPR 2022, arXiv:2112.10752 (a frozen autoencoder's latent space,
        latents multiplied by the autoencoder's scaling factor).
    Kingma, Welling. Auto-Encoding Variational Bayes. arXiv:1312.6114 (the autoencoder; the
        posterior mean is the latent used here).

The autoencoder is read from a local ``save_pretrained`` folder (never from a model hub), frozen
(``requires_grad`` False, eval mode) and kept out of the models' state dicts and optimizers: a
model stores the folder's path in its config and loads it again. diffusers is imported only when
an autoencoder is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["LatentSpace", "load_local_vae"]


def load_local_vae(path: str | Path) -> Any:
    """A frozen diffusers ``AutoencoderKL`` (eval mode, no gradients) from a local folder.

    A folder without ``config.json`` is a FileNotFoundError, a damaged one a ValueError; both
    one line naming the folder.
    """
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"vae folder {str(path)!r} has no config.json; give the folder of a local diffusers "
            "AutoencoderKL (saved with save_pretrained)"
        )
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
    except Exception as error:  # diffusers and safetensors raise many kinds on damaged files
        first = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(
            f"vae folder {str(path)!r} is not a loadable AutoencoderKL: "
            f"{type(error).__name__}: {first}"
        ) from error
    vae.requires_grad_(False)
    return vae.eval()


class LatentSpace:
    """Images in [-1, 1] <-> latents ``scale * E[q(z | x)]`` of a frozen local AutoencoderKL.

    Arguments:
        folder: the autoencoder's local folder.
        scale: multiplies the latents (default: the autoencoder's ``scaling_factor``).

    ``encode`` and ``decode`` take any leading dimensions (``(B, C, H, W)`` images or
    ``(B, F, C, H, W)`` videos, frame by frame) and run without gradients.

    >>> space = LatentSpace("runs/vae")  # doctest: +SKIP
    >>> space.latent_side(32), space.channels  # doctest: +SKIP
    (8, 4)
    """

    def __init__(self, folder: str | Path, scale: float | None = None) -> None:
        self.folder = Path(folder).resolve()
        self.autoencoder = load_local_vae(folder)
        config = self.autoencoder.config
        self.factor = 2 ** (len(config.block_out_channels) - 1)
        self.channels = int(config.latent_channels)
        self.image_channels = int(config.in_channels)
        self.scale = float(scale if scale is not None else config.scaling_factor)

    def latent_side(self, image_side: int) -> int:
        """The latent grid side of ``image_side`` pixels; a ValueError unless it divides."""
        if image_side % self.factor:
            raise ValueError(
                f"resolution {image_side} must be divisible by the autoencoder's downsampling "
                f"factor {self.factor}"
            )
        return image_side // self.factor

    def _autoencoder_like(self, x: torch.Tensor) -> Any:
        # Move only when needed: diffusers warns on every dtype cast.
        p = next(self.autoencoder.parameters())
        if p.device != x.device or p.dtype != x.dtype:
            self.autoencoder.to(x.device, x.dtype)
        return self.autoencoder

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(..., C, H, W)`` in [-1, 1] -> scaled latent means ``(..., c, h, w)``."""
        flat = images.reshape(-1, *images.shape[-3:])
        latents = self._autoencoder_like(images).encode(flat).latent_dist.mean * self.scale
        return latents.reshape(*images.shape[:-3], *latents.shape[1:])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(..., c, h, w)`` -> images ``(..., C, H, W)`` (about [-1, 1])."""
        flat = latents.reshape(-1, *latents.shape[-3:]) / self.scale
        images = self._autoencoder_like(latents).decode(flat).sample
        return images.reshape(*latents.shape[:-3], *images.shape[1:])
