"""Latent-space normal-adapted diffusion through a local, frozen diffusers AutoencoderKL."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import default_collate

from diffusion.data import NormalMapDataset
from diffusion.models import NormalAdaptedDiffusion, NormalAlignedDiffusion
from diffusion.pipelines import NormalAdaptedPipeline
from tests.core.helpers import save_tiny_vae
from tests.diffusion.helpers import fixed_loss, train_config, train_steps
from trainers.optim import build_optimizer

TINY = dict(resolution=16, block_out_channels=(8, 16), norm_num_groups=4)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A 2-level AutoencoderKL with few channels: 16x16 RGB -> 4 x 8x8 latents."""
    return save_tiny_vae(tmp_path_factory.mktemp("vae") / "tiny_vae")


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    data = NormalMapDataset(16, num_samples=8, seed=0, max_steps=48)
    return default_collate([data[i] for i in range(8)])


def test_latent_shapes_scaling_and_state_dict(vae_dir, batch) -> None:
    model = NormalAdaptedDiffusion(**TINY, vae=str(vae_dir))
    assert model.sample_shape == (4, 8, 8)
    assert model.unet.config.in_channels == 4 and model.unet.config.out_channels == 4
    assert model.unet.config.sample_size == 8
    assert model.latent_scale == 0.7
    assert not model.scheduler.config.clip_sample
    assert not any(name.startswith(("_vae", "vae")) for name in model.state_dict())
    latents = model.encode(batch["x"])
    expected = model.vae.encode(batch["x"]).latent_dist.mean * 0.7
    torch.testing.assert_close(latents, expected)
    assert latents.shape == (8, 4, 8, 8)
    other = NormalAdaptedDiffusion(**TINY, vae=str(vae_dir), latent_scale=0.25)
    torch.testing.assert_close(other.encode(batch["x"]), latents / 0.7 * 0.25)
    torch.testing.assert_close(other.decode(other.encode(batch["x"])),
                               model.decode(latents), rtol=1e-4, atol=1e-5)


def test_latent_training_lowers_the_loss_and_leaves_the_vae_frozen(vae_dir, batch) -> None:
    model = NormalAdaptedDiffusion(**TINY, vae=str(vae_dir))
    vae_before = {k: v.clone() for k, v in model.vae.state_dict().items()}
    vae_ids = {id(p) for p in model.vae.parameters()}
    assert not vae_ids & {id(p) for p in model.parameters()}
    from types import SimpleNamespace

    config = SimpleNamespace(name="adamw", lr=3e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                             weight_decay=0.0)
    optimizer = build_optimizer(model, config)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimized & vae_ids
    assert optimized == {id(p) for p in model.parameters()}
    before = fixed_loss(model, batch)
    assert torch.isfinite(torch.tensor(before))
    train_steps(model, batch, optimizer)
    assert all(p.grad is None for p in model.vae.parameters())
    for key, value in model.vae.state_dict().items():
        torch.testing.assert_close(value, vae_before[key], rtol=0, atol=0)
    assert fixed_loss(model, batch) < 0.8 * before


def test_latent_sampling_decodes_and_round_trips(vae_dir, tmp_path) -> None:
    model = NormalAdaptedDiffusion(**TINY, vae=str(vae_dir))
    pipe = NormalAdaptedPipeline(model=model)
    samples = pipe(labels=torch.tensor([0, 5]), generator=torch.Generator().manual_seed(3),
                   steps=3)
    assert samples.shape == (2, 3, 16, 16)
    assert samples.abs().max() <= 1.0 and samples.std() > 0
    logged = model.sample_for_logging(2, torch.Generator().manual_seed(1))
    assert logged.shape == (2, 3, 16, 16) and 0.0 <= logged.min() and logged.max() <= 1.0
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = NormalAdaptedPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.model.config.vae == str(vae_dir.resolve())
    again = loaded(labels=torch.tensor([0, 5]), generator=torch.Generator().manual_seed(3),
                   steps=3)
    torch.testing.assert_close(again, samples, rtol=0, atol=0)
    model.save_pretrained(tmp_path / "model")
    direct = NormalAdaptedDiffusion.from_pretrained(tmp_path / "model")
    torch.testing.assert_close(direct.vae.state_dict()["encoder.conv_in.weight"],
                               model.vae.state_dict()["encoder.conv_in.weight"])


@pytest.mark.float64
def test_latent_model_runs_in_float64(vae_dir, batch) -> None:
    model = NormalAdaptedDiffusion(**TINY, vae=str(vae_dir)).double()
    out = model.loss({k: v.double() if v.is_floating_point() else v for k, v in batch.items()})
    assert out["loss"].dtype == torch.float64 and torch.isfinite(out["loss"])
    samples = NormalAdaptedPipeline(model=model)(labels=torch.tensor([1]), steps=2,
                                                 generator=torch.Generator().manual_seed(0))
    assert samples.dtype == torch.float64 and samples.shape == (1, 3, 16, 16)


def test_missing_or_bad_vae_folder_is_one_clear_line(vae_dir, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="has no config.json") as info:
        NormalAdaptedDiffusion(**TINY, vae=str(tmp_path / "missing"))
    assert "\n" not in str(info.value) and "missing" in str(info.value)
    with pytest.raises(ValueError, match="divisible by the autoencoder's downsampling factor 2"):
        NormalAdaptedDiffusion(resolution=15, block_out_channels=(8,), norm_num_groups=4,
                               vae=str(vae_dir))
    model = NormalAdaptedDiffusion(**TINY, vae=str(vae_dir))
    model.save_pretrained(tmp_path / "model")
    model.save_pretrained(tmp_path / "model")
    import json

    config_path = tmp_path / "model" / "config.json"
    config = json.loads(config_path.read_text())
    config["vae"] = str(tmp_path / "gone")
    config_path.write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="gone.*has no config.json"):
        NormalAdaptedDiffusion.from_pretrained(tmp_path / "model")


def test_latent_config_trains_with_the_trainer_and_samples(vae_dir, tmp_path) -> None:
    from diffusion.sampling import sample_normals
    from trainers import load_checkpoint_model

    out = train_config("normal_adapted.yaml", tmp_path / "run", f"model.vae={vae_dir}")
    model, _ = load_checkpoint_model(out)
    assert model.vae is not None and model.sample_shape == (4, 8, 8)
    summary = sample_normals(out, "front view, full body", num=2, seed=0,
                             out=tmp_path / "n.png", steps=2, guidance=2.0, device="cpu")
    assert Path(summary["out"]).is_file() and summary["norm_error"] >= 0.0


@pytest.mark.parametrize("conditioning", ["concat", "both"])
def test_latent_aligned_model_trains_samples_and_round_trips(
    conditioning: str, vae_dir, batch, tmp_path
) -> None:
    from diffusion.pipelines import NormalAlignedPipeline

    model = NormalAlignedDiffusion(**TINY, conditioning=conditioning, vae=str(vae_dir))
    assert model.sample_shape == (4, 8, 8)
    assert model.unet.config.in_channels == 8  # image latents + normal-map latents
    if model.controlnet is not None:
        assert model.controlnet.config.conditioning_channels == 4
    torch.testing.assert_close(model.condition(batch["x"]), model.encode(batch["x"]))
    vae_ids = {id(p) for p in model.vae.parameters()}
    assert not vae_ids & {id(p) for p in model.parameters()}
    before = fixed_loss(model, batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    train_steps(model, batch, optimizer)
    assert all(p.grad is None for p in model.vae.parameters())
    assert fixed_loss(model, batch) < 0.8 * before
    pipe = NormalAlignedPipeline(model=model)
    normals = batch["x"][:2]
    samples = pipe(normals, generator=torch.Generator().manual_seed(2), steps=2)
    assert samples.shape == (2, 3, 16, 16) and samples.abs().max() <= 1.0
    pipe.save_pretrained(tmp_path / "aligned")
    loaded = NormalAlignedPipeline.from_pretrained(tmp_path / "aligned")
    again = loaded(normals, generator=torch.Generator().manual_seed(2), steps=2)
    torch.testing.assert_close(again, samples, rtol=0, atol=0)
    logged = model.sample_for_logging(2, torch.Generator().manual_seed(0))
    assert logged.shape == (2, 3, 16, 32) and 0.0 <= logged.min() and logged.max() <= 1.0
