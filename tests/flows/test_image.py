"""TransformerFlow: inverse, log-determinant, Jacobi, guidance, save/load, training, latents."""

from __future__ import annotations

import math

import pytest
import torch

from flows.image import TransformerFlow, patchify, quantise, unpatchify
from flows.jacobi import JacobiSolver
from flows.sampling import ImageFlowSampler

TINY = dict(image_size=8, in_channels=1, patch_size=2, width=16, num_heads=2)
STARFLOW = dict(start_token=True, positions="rope", affine="softplus")


def _flow(randomise: bool = True, **kwargs) -> TransformerFlow:
    options = {**TINY, "layers_per_block": [1, 1, 2], **kwargs}
    flow = TransformerFlow(**options).eval()
    if randomise:  # zero-initialised output projections would make every test trivial
        with torch.no_grad():
            for p in flow.parameters():
                p.add_(0.2 * torch.randn_like(p))
    return flow


def test_patchify_round_trip() -> None:
    x = torch.randn(2, 3, 8, 8)
    tokens = patchify(x, 2)
    assert tokens.shape == (2, 16, 12)
    torch.testing.assert_close(tokens[0, 1], x[0, :, 0:2, 2:4].flatten())
    torch.testing.assert_close(unpatchify(tokens, 3, 8, 2), x)


def test_fresh_flow_is_identity_with_zero_logdet() -> None:
    flow = _flow(randomise=False)
    x = torch.randn(2, 1, 8, 8)
    z, logdet = flow(x)
    torch.testing.assert_close(z, x)
    assert torch.all(logdet == 0)


@pytest.mark.float64
@pytest.mark.parametrize("variant", ["tarflow", "starflow-cond"])
def test_round_trip_every_method(variant: str) -> None:
    kwargs = {} if variant == "tarflow" else {**STARFLOW, "num_classes": 3}
    flow = _flow(**kwargs)
    x = torch.randn(3, 1, 8, 8)
    y = torch.tensor([0, 2, 1]) if kwargs else None
    z, logdet = flow(x, y)
    assert (z - x).abs().max() > 0.1 and logdet.abs().min() > 1e-3
    for method in ("sequential", "jacobi", "auto"):
        sampler = ImageFlowSampler(flow, method, jacobi_threshold=0.0, jacobi_max_iter=16)
        back, info = sampler.reverse(z, y)
        torch.testing.assert_close(back, x, rtol=0, atol=1e-10)
        assert info["method"] == method or method == "auto"


@pytest.mark.float64
def test_logdet_matches_autograd_jacobian() -> None:
    flow = _flow(image_size=4, patch_size=1, **STARFLOW, num_classes=2)
    x, y = torch.randn(1, 1, 4, 4), torch.tensor([1])
    _, logdet = flow(x, y)
    jac = torch.autograd.functional.jacobian(
        lambda v: flow(v.view(1, 1, 4, 4), y)[0].flatten(), x.flatten()
    )
    sign, expected = torch.linalg.slogdet(jac)
    assert sign.item() == 1 and abs(expected.item()) > 0.1
    torch.testing.assert_close(logdet[0], expected, rtol=0, atol=1e-10)


@pytest.mark.float64
def test_jacobi_equals_sequential_and_reports_passes() -> None:
    flow = _flow()
    z = torch.randn(2, 1, 8, 8)
    seq, info_s = ImageFlowSampler(flow, "sequential").reverse(z)
    jacobi = ImageFlowSampler(flow, "jacobi", jacobi_threshold=0.0, jacobi_max_iter=[15, 15, 15])
    jac, info_j = jacobi.reverse(z)
    torch.testing.assert_close(jac, seq, rtol=0, atol=1e-10)
    assert info_s["method"] == "sequential" and info_j["method"] == "jacobi"
    assert info_s["iterations"] == [15, 15, 15]  # token 0 is kept: 15 unknowns
    assert info_s["token_passes"] == [15, 15, 15]
    assert info_j["iterations"] == [15, 15, 15]  # one token accepted per pass at threshold 0
    assert info_j["token_passes"] == [sum(range(1, 16))] * 3  # 15 + 14 + ... + 1
    chunked, info_c = ImageFlowSampler(
        flow, "jacobi", jacobi_threshold=0.0, jacobi_chunk=4, jacobi_max_iter=4
    ).reverse(z)
    torch.testing.assert_close(chunked, seq, rtol=0, atol=1e-10)
    assert info_c["iterations"] == [15, 15, 15] and info_c["jacobi_chunk"] == 4
    with pytest.raises(ValueError, match="jacobi_max_iter lists 2 budgets for 3 blocks"):
        ImageFlowSampler(flow, jacobi_max_iter=[4, 4])
    with pytest.raises(ValueError, match="2 solvers given for 3 blocks"):
        flow.reverse(z, solvers=[JacobiSolver()] * 2)


@pytest.mark.float64
@pytest.mark.parametrize("rule", ["tarflow", "starflow"])
def test_guidance(rule: str) -> None:
    flow = _flow(num_classes=3, **STARFLOW)
    z, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 2])
    plain, _ = flow.reverse(z, y)
    guided, _ = flow.reverse(z, y, guidance=1.5, guidance_rule=rule)
    assert (guided - plain).abs().max() > 1e-3
    exact_jacobi = JacobiSolver(threshold=0.0, max_iter=16)
    guided_j, _ = flow.reverse(z, y, exact_jacobi, guidance=1.5, guidance_rule=rule)
    torch.testing.assert_close(guided_j, guided, rtol=0, atol=1e-10)
    tiny, _ = flow.reverse(z, y, guidance=1e-7, guidance_rule=rule)
    torch.testing.assert_close(tiny, plain, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="guidance needs a class-conditional model"):
        flow.reverse(z, None, guidance=1.0)


def test_labels_are_checked() -> None:
    flow = _flow(num_classes=3)
    z = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"class labels must lie in 0..2, got \[3\]"):
        flow.reverse(z, torch.tensor([3]))
    with pytest.raises(ValueError, match="unconditional"):
        _flow().reverse(z, torch.tensor([0]))
    with pytest.raises(ValueError, match="method 'newton' is unknown"):
        ImageFlowSampler(flow, method="newton")


@pytest.mark.float64
def test_save_load_gives_identical_outputs(tmp_path) -> None:
    flow = _flow(num_classes=3, **STARFLOW)
    flow.save_pretrained(tmp_path / "flow")
    loaded = TransformerFlow.from_pretrained(tmp_path / "flow").eval()
    state, loaded_state = flow.state_dict(), loaded.state_dict()
    assert list(loaded_state) == list(state)  # zip alone would pass with missing entries
    for name, a in state.items():
        assert torch.equal(a, loaded_state[name]), name
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    z1, l1 = flow(x, y)
    z2, l2 = loaded(x, y)
    # equal weights; BLAS may take another path on the loaded (memory-mapped) buffers
    torch.testing.assert_close(z2, z1, rtol=0, atol=1e-12)
    torch.testing.assert_close(l2, l1, rtol=0, atol=1e-12)
    back1, _ = flow.reverse(z1, y)
    torch.testing.assert_close(loaded.reverse(z1, y)[0], back1, rtol=0, atol=1e-12)


@pytest.mark.float64
def test_tweedie_denoiser_on_a_gaussian() -> None:
    # A fresh flow is the identity: p(x_noisy) = N(0, I). If clean data ~ N(0, 1 - s^2) then
    # noisy data ~ N(0, I) and E[x_clean | x_noisy] = (1 - s^2) x_noisy exactly.
    sigma = 0.3
    flow = _flow(randomise=False, noise_sigma=sigma)
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(flow.denoise(x), (1 - sigma**2) * x, rtol=0, atol=1e-12)


@pytest.mark.float64
def test_bits_per_dim_uses_uniform_dequantisation_and_ln128() -> None:
    flow = _flow(randomise=False)  # identity: log p(x) = log N(x; 0, I)
    images = torch.randint(0, 256, (3, 1, 8, 8)) / 127.5 - 1
    torch.manual_seed(5)
    bpd = flow.bits_per_dim(images)
    torch.manual_seed(5)
    x = 2 * (torch.round((images + 1) * 127.5) + torch.rand(images.shape)) / 256 - 1
    nats = -torch.distributions.Normal(0.0, 1.0).log_prob(x).flatten(1).mean(1)
    # density on [-1, 1) -> mass of one 8-bit level: bits = (nats + ln 128) / ln 2
    torch.testing.assert_close(bpd, (nats + math.log(128)) / math.log(2))
    assert torch.all((x >= -1) & (x < 1))


def test_training_steps_on_digits_lower_the_loss() -> None:
    from flows.data import digits

    torch.manual_seed(0)
    data = digits(size=8)
    flow = TransformerFlow(**{**TINY, "width": 32}, layers_per_block=[1, 1], num_classes=10)
    flow.train()
    optimizer = torch.optim.AdamW(flow.parameters(), lr=3e-3)
    batch = {
        "x": torch.stack([data[i]["x"] for i in range(64)]),
        "y": torch.stack([data[i]["y"] for i in range(64)]),
    }
    losses = []
    for _ in range(25):
        out = flow.loss(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert set(out) >= {"loss", "bits_per_dim"}
    assert sum(losses[-5:]) / 5 < losses[0] - 0.2, losses


def test_sample_for_logging_and_auto() -> None:
    flow = _flow(num_classes=2)
    images = flow.sample_for_logging(3, torch.Generator().manual_seed(0))
    assert images.shape == (3, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    attributes = dict(vars(flow))
    _, info = ImageFlowSampler(flow, method="auto").sample(2)
    assert info["method"] in ("sequential", "jacobi")
    assert vars(flow) == attributes  # the sampler, not the model, keeps what auto measured
    with pytest.raises(ValueError, match="number of samples must be >= 0, got -1"):
        ImageFlowSampler(flow).sample(-1)


def test_quantise_rounds_to_the_nearest_of_evenly_spaced_levels() -> None:
    x = torch.tensor([-1.2, -1.0, -0.93, -0.94, 0.0, 0.06, 0.07, 1.0, 3.0])
    # 17 levels in [-1, 1]: spacing 0.125; -0.93 is nearer -0.875, -0.94 nearer -1
    expected = torch.tensor([-1.0, -1.0, -0.875, -1.0, 0.0, 0.0, 0.125, 1.0, 1.0])
    assert torch.allclose(quantise(x, 17), expected)
    assert quantise(x, None) is x
    pixels = ((quantise(torch.linspace(-1, 1, 1000), 17) + 1) * 127.5).round().unique()
    assert len(pixels) == 17  # what a PNG stores: 17 grey values, like the digits data


def test_levels_round_the_samples_only() -> None:
    torch.manual_seed(0)
    plain, rounded = _flow(num_classes=2), _flow(randomise=False, num_classes=2, levels=5)
    rounded.load_state_dict(plain.state_dict())
    images, _ = ImageFlowSampler(rounded).sample(3, generator=torch.Generator().manual_seed(1))
    free, _ = ImageFlowSampler(plain).sample(3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(images, quantise(free, 5))
    assert set(images.unique().tolist()) <= {-1.0, -0.5, 0.0, 0.5, 1.0}
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    assert torch.equal(rounded(x)[0], plain(x)[0])  # the flow itself is unchanged
    for bad in (1, 2.5, True, 70000):
        with pytest.raises(ValueError, match=f"levels must be null or an integer .* got {bad!r}"):
            TransformerFlow(**TINY, levels=bad)


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        latent_channels=2,
        norm_num_groups=4,
        sample_size=8,
        scaling_factor=0.5,
    )
    path = tmp_path_factory.mktemp("vae") / "tiny_vae"
    vae.save_pretrained(path)
    return path


@pytest.mark.float64
def test_latent_mode_with_a_local_autoencoder(tiny_vae_dir, tmp_path) -> None:
    flow = _flow(vae=str(tiny_vae_dir), noise_sigma=0.3)
    assert flow.sample_shape == (2, 4, 4) and flow.image_shape == (1, 8, 8)
    assert flow.latent_scale == 0.5
    assert not any(name.startswith("_vae") for name in flow.state_dict())
    images = torch.rand(2, 1, 8, 8) * 2 - 1
    latents = flow.encode(images)
    expected = flow.vae.encode(images).latent_dist.mean * 0.5
    torch.testing.assert_close(latents, expected)
    z, _ = flow(latents)
    torch.testing.assert_close(flow.reverse(z)[0], latents, rtol=0, atol=1e-10)
    out = flow.loss({"x": images})
    assert torch.isfinite(out["loss"])
    samples, _ = ImageFlowSampler(flow, method="jacobi").sample(2)
    assert samples.shape == (2, 1, 8, 8)
    flow.save_pretrained(tmp_path / "latent_flow")
    loaded = TransformerFlow.from_pretrained(tmp_path / "latent_flow")
    torch.testing.assert_close(loaded(latents)[0], z, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        TransformerFlow(**TINY, vae=str(tmp_path / "missing"))
