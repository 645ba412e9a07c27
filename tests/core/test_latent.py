"""core.latent: a local frozen AutoencoderKL as a latent space; missing or damaged folders."""

from __future__ import annotations

import pytest
import torch

from core.latent import LatentSpace, load_local_vae
from tests.core.helpers import save_tiny_vae


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A 2-level AutoencoderKL with few channels: 16x16 RGB -> 4 x 8x8 latents."""
    return save_tiny_vae(tmp_path_factory.mktemp("vae") / "tiny_vae")


def test_frozen_and_scaled(vae_dir) -> None:
    space = LatentSpace(vae_dir)
    assert not space.autoencoder.training
    assert not any(p.requires_grad for p in space.autoencoder.parameters())
    assert (space.factor, space.channels, space.image_channels, space.scale) == (2, 4, 3, 0.7)
    assert space.folder == vae_dir.resolve() and space.latent_side(16) == 8
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    latents = space.encode(images)
    expected = space.autoencoder.encode(images).latent_dist.mean * 0.7
    torch.testing.assert_close(latents, expected)
    torch.testing.assert_close(space.decode(latents),
                               space.autoencoder.decode(latents / 0.7).sample)
    other = LatentSpace(vae_dir, scale=0.25)
    torch.testing.assert_close(other.encode(images), latents / 0.7 * 0.25)
    torch.testing.assert_close(other.decode(other.encode(images)), space.decode(latents))


def test_videos_are_encoded_frame_by_frame(vae_dir) -> None:
    space = LatentSpace(vae_dir)
    video = torch.rand(2, 5, 3, 16, 16) * 2 - 1
    latents = space.encode(video)
    assert latents.shape == (2, 5, 4, 8, 8)
    torch.testing.assert_close(latents[1, 3], space.encode(video[1, 3:4])[0])
    assert space.decode(latents).shape == video.shape


@pytest.mark.float64
def test_follows_the_input_dtype(vae_dir) -> None:
    space = LatentSpace(vae_dir)
    latents = space.encode(torch.rand(1, 3, 16, 16, dtype=torch.float64))
    assert latents.dtype == torch.float64 and space.decode(latents).dtype == torch.float64


def test_missing_or_damaged_folders_are_one_line(vae_dir, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="'.*missing' has no config.json") as info:
        load_local_vae(tmp_path / "missing")
    assert "\n" not in str(info.value)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text((vae_dir / "config.json").read_text())
    (damaged / "diffusion_pytorch_model.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match="is not a loadable AutoencoderKL") as info:
        load_local_vae(damaged)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="resolution 15 must be divisible by the autoencoder's"):
        LatentSpace(vae_dir).latent_side(15)
