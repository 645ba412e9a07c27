"""VideoTransformerFlow: inverse, log-det, temporal causality, video Jacobi, sliding window,
conditioning, guidance, the flow-score-matching denoiser, save/load and latent mode."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from flows.video import VideoFlowSampler, VideoTransformerFlow
from flows.video.text import TextEmbedding

T, S, P = 3, 4, 2  # frames, frame side, patch: 4 tokens of 4 numbers per frame


def _model(randomise: bool = True, **kwargs) -> VideoTransformerFlow:
    options = dict(
        frames=T,
        image_size=S,
        in_channels=1,
        patch_size=P,
        width=16,
        num_heads=2,
        local_blocks=2,
        local_depth=1,
        global_depth=2,
        denoiser_width=16,
        denoiser_depth=1,
        denoiser_past_frames=1,
        noise_sigma=0.1,
    )
    options.update(kwargs)
    model = VideoTransformerFlow(**options).eval()
    if randomise:  # zero-initialised output projections would make every test trivial
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.2 * torch.randn_like(p))
    return model


SAMPLER_OPTIONS = ("jacobi_threshold", "jacobi_max_iter", "jacobi_chunk", "jacobi_init",
                   "context_frames")  # fmt: skip


def _reverse(model: VideoTransformerFlow, z, y=None, text=None, method="sequential", **kwargs):
    """Invert with a fresh sampler: sampler options go to it, the rest to ``reverse``."""
    options = {key: kwargs.pop(key) for key in SAMPLER_OPTIONS if key in kwargs}
    return VideoFlowSampler(model, method, **options).reverse(z, y, text, **kwargs)


def _video(batch: int = 2, frames: int = T) -> torch.Tensor:
    return torch.randn(batch, frames, 1, S, S)


COND = {"num_classes": 3, "text_tokens": 4}


def _cond(model: VideoTransformerFlow, batch: int = 2):
    y = torch.arange(batch) % 3
    text = model.encode_prompts(["a 3 and 7", "a 1 moving"][:batch])
    return y, text


def test_fresh_model_is_identity() -> None:
    model = _model(randomise=False, affine="exp")
    x = _video()
    z, logdet = model(x)
    torch.testing.assert_close(z, x)
    assert torch.all(logdet == 0)


@pytest.mark.float64
@pytest.mark.parametrize("method", ["sequential", "jacobi"])
@pytest.mark.parametrize("local_blocks", [1, 2])
def test_round_trip(method: str, local_blocks: int) -> None:
    model = _model(local_blocks=local_blocks, **COND)
    x = _video()
    y, text = _cond(model)
    z, _ = model(x, y, text)
    assert (z - x).abs().max() > 1e-2
    back, info = _reverse(
        model, z, y, text, method=method, jacobi_threshold=0.0, jacobi_max_iter=S * S
    )
    torch.testing.assert_close(back, x, rtol=0, atol=1e-10)
    assert len(info["iterations_per_frame"]) == T


@pytest.mark.float64
def test_logdet_matches_autograd_jacobian() -> None:
    model = _model(**COND)
    x = _video(batch=1)
    y, text = _cond(model, batch=1)

    def flat(v: torch.Tensor) -> torch.Tensor:
        return model(v.reshape(x.shape), y, text)[0].flatten()

    jacobian = torch.autograd.functional.jacobian(flat, x.flatten())
    _, logdet = model(x, y, text)
    torch.testing.assert_close(logdet[0], torch.linalg.slogdet(jacobian)[1], rtol=0, atol=1e-9)


@pytest.mark.float64
@pytest.mark.parametrize("local_blocks", [1, 2])
def test_temporal_causality(local_blocks: int) -> None:
    model = _model(local_blocks=local_blocks)
    x = _video()
    z, _ = model(x)
    for t in range(T - 1):
        bumped = x.clone()
        bumped[:, t + 1 :] += torch.randn_like(bumped[:, t + 1 :])
        z2, _ = model(bumped)
        torch.testing.assert_close(z2[:, : t + 1], z[:, : t + 1], rtol=0, atol=0)
        assert (z2[:, t + 1] - z[:, t + 1]).abs().max() > 1e-3


@pytest.mark.float64
def test_local_blocks_never_mix_frames() -> None:
    model = _model(local_blocks=2)
    tokens = model._tokens(_video())
    u, _ = model.local_forward(tokens)
    for t in range(T):
        bumped = tokens.clone()
        bumped[:, t] += 1.0
        u2, _ = model.local_forward(bumped)
        others = [s for s in range(T) if s != t]
        torch.testing.assert_close(u2[:, others], u[:, others], rtol=0, atol=0)
        assert (u2[:, t] - u[:, t]).abs().max() > 1e-3


@pytest.mark.float64
@pytest.mark.parametrize(
    "chunk, init", [(None, "previous"), (3, "previous"), (8, "previous"), (None, "noise")]
)
def test_video_jacobi_equals_sequential_with_guidance(chunk: int | None, init: str) -> None:
    model = _model(**COND)
    y, text = _cond(model)
    z = _video()
    kwargs = dict(guidance=1.5, guidance_rule="starflow")
    seq, info_s = _reverse(model, z, y, text, method="sequential", **kwargs)
    jac, info_j = _reverse(
        model,
        z,
        y,
        text,
        method="jacobi",
        jacobi_threshold=0.0,
        jacobi_chunk=chunk,
        jacobi_init=init,
        **kwargs,
    )
    torch.testing.assert_close(jac, seq, rtol=0, atol=1e-10)
    assert info_s["iterations_per_frame"] == [S * S // P // P] * T
    # A chunk of c tokens is exact after c passes, so the loop never needs more.
    assert max(info_j["iterations_per_frame"]) <= max(chunk or 0, model.tokens_per_frame)
    with pytest.raises(ValueError, match="whole frames"):
        _reverse(model, z, y, text, method="jacobi", jacobi_chunk=6)


@pytest.mark.float64
def test_window_jacobi_accepts_unmoved_tokens() -> None:
    # With a small positive threshold the deep block accepts the prefix of tokens that no
    # longer move, so later passes recompute less; the result stays close to sequential.
    model = _model(**COND)
    y, text = _cond(model)
    z = _video()
    n = model.tokens_per_frame
    seq, _ = _reverse(model, z, y, text, method="sequential")
    for chunk in (None, n * T):
        jac, info = _reverse(
            model, z, y, text, method="jacobi", jacobi_threshold=1e-14, jacobi_chunk=chunk
        )
        torch.testing.assert_close(jac, seq, rtol=0, atol=1e-5)
        assert sum(info["iterations_per_frame"]) <= T * n


@pytest.mark.float64
def test_generation_beyond_training_length_keeps_context() -> None:
    model = _model(**COND)
    y, text = _cond(model)
    given = torch.rand(2, 2, 1, S, S) * 2 - 1
    generator = torch.Generator().manual_seed(1)
    sampler = VideoFlowSampler(model, "jacobi", context_frames=1)
    video, info = sampler.sample(
        2, num_frames=2 * T, y=y, text=text, given=given, generator=generator, denoise="none"
    )
    assert video.shape == (2, 2 + 2 * T, 1, S, S)
    assert torch.equal(video[:, :2], given)
    assert len(info["iterations_per_frame"]) == 2 * T
    assert torch.isfinite(video).all()
    # Frames before the first window rebuild do not depend on how many frames follow.
    z = torch.randn(2, 2 * T, 1, S, S)
    noisy_given = given + 0.1 * torch.randn_like(given)
    long, _ = _reverse(model, z, y, text, given=noisy_given, method="sequential", context_frames=1)
    short, _ = _reverse(model, z[:, :1], y, text, given=noisy_given, method="sequential")
    torch.testing.assert_close(long[:, :1], short, rtol=0, atol=1e-12)
    # Sliding-window Jacobi equals sliding-window sequential.
    jac, _ = _reverse(
        model,
        z,
        y,
        text,
        given=noisy_given,
        method="jacobi",
        jacobi_threshold=0.0,
        context_frames=1,
    )
    torch.testing.assert_close(jac, long, rtol=0, atol=1e-10)


@pytest.mark.float64
@pytest.mark.parametrize("rule", ["tarflow", "starflow"])
def test_guidance_zero_equals_conditional(rule: str) -> None:
    model = _model(**COND)
    y, text = _cond(model)
    z = _video()
    plain, _ = _reverse(model, z, y, text, method="sequential")
    guided, _ = _reverse(model, z, y, text, method="sequential", guidance=0.0, guidance_rule=rule)
    torch.testing.assert_close(guided, plain, rtol=0, atol=1e-12)
    strong, _ = _reverse(model, z, y, text, method="sequential", guidance=2.0, guidance_rule=rule)
    assert (strong - plain).abs().max() > 1e-4


@pytest.mark.float64
def test_conditioning_dropout() -> None:
    model = _model(**COND, learned_denoiser=False)
    y, text = _cond(model)
    x = _video()
    everything = torch.ones(2, dtype=torch.bool)
    z_drop, ld_drop = model(x, y, text, drop=everything)
    z_null, ld_null = model(x)
    torch.testing.assert_close(z_drop, z_null, rtol=0, atol=0)
    torch.testing.assert_close(ld_drop, ld_null, rtol=0, atol=0)
    z_keep, _ = model(x, y, text, drop=~everything)
    torch.testing.assert_close(z_keep, model(x, y, text)[0], rtol=0, atol=0)
    assert (z_keep - z_null).abs().max() > 1e-3
    # In training, condition_dropout = 1 makes every loss the unconditional one (labels only here).
    labelled = _model(num_classes=3, learned_denoiser=False)
    batch = {"x": x.clamp(-1, 1), "y": y}
    for p in (1.0, 0.0):
        labelled.register_to_config(condition_dropout=p)
        labelled.train()
        torch.manual_seed(3)
        conditional = labelled.loss(batch)["loss"]
        torch.manual_seed(3)
        null = labelled.loss({"x": batch["x"]})["loss"]
        assert torch.allclose(conditional, null) == (p == 1.0)


@pytest.mark.float64
def test_denoiser_target_is_the_flow_score() -> None:
    model = _model()
    model.train()
    seen = {}

    def capture(tokens: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen["x"], seen["target"] = model._video(tokens), model._video(target)
        return target.pow(2).mean()

    model.auxiliary_state().accumulate = capture
    out = model.loss({"x": _video().clamp(-1, 1)})
    assert set(out) == {"loss", "bits_per_dim", "denoiser_loss"}
    x, target = seen["x"], seen["target"]
    model.eval()
    torch.testing.assert_close(target, model.denoiser_target(x), rtol=0, atol=1e-12)
    # ... and it is -sigma d log p / dx by central finite differences.
    eps, sigma = 1e-6, model.config.noise_sigma
    for index in [(0, 0, 0, 0, 0), (1, 2, 0, 3, 1), (0, 1, 0, 2, 2)]:
        step = torch.zeros_like(x)
        step[index] = eps
        with torch.no_grad():
            numeric = (model.log_prob(x + step) - model.log_prob(x - step)).sum() / (2 * eps)
        assert math.isclose(float(target[index]), -sigma * float(numeric), abs_tol=1e-6)


def test_denoiser_trains_with_its_own_optimizer() -> None:
    model = _model(randomise=False, learned_denoiser=True)
    with torch.no_grad():  # a non-trivial flow, so the score is not just -x / 1
        for block in [*model.local, model.global_block]:
            block.out.weight.normal_(std=0.1)
    flow_before = {n: p.clone() for n, p in model.named_parameters() if "denoiser" not in n}
    den_before = {n: p.clone() for n, p in model.denoiser.named_parameters()}
    model.train()
    batch = {"x": _video(4).clamp(-1, 1)}
    losses = []
    for _ in range(25):
        out = model.loss(batch)
        out["loss"].backward()
        assert all(p.grad is None for p in model.denoiser.parameters())
        model.after_optimizer_step()
        losses.append(float(out["denoiser_loss"]))
    for n, p in model.named_parameters():
        if "denoiser" not in n:
            assert torch.equal(p, flow_before[n])  # only the trainer's optimizer moves the flow
    assert any(not torch.equal(p, den_before[n]) for n, p in model.denoiser.named_parameters())
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])


def test_learned_denoiser_is_block_causal_in_time() -> None:
    model = _model(frames=4, denoiser_past_frames=1, denoiser_future_frames=1)
    x = _video(frames=4)
    out = model.denoise(x, "learned")
    bumped = x.clone()
    bumped[:, 3] += 1.0
    out2 = model.denoise(bumped, "learned")
    torch.testing.assert_close(out2[:, :2], out[:, :2], rtol=0, atol=0)  # frame 3 unseen
    assert (out2[:, 2] - out[:, 2]).abs().max() > 1e-4  # one future frame is seen


def test_sample_for_logging_and_save_load(tmp_path) -> None:
    model = _model(**COND)
    generator = torch.Generator().manual_seed(0)
    videos = model.sample_for_logging(2, generator)
    assert videos.shape == (2, T, 1, S, S)
    assert videos.min() >= 0 and videos.max() <= 1
    model.save_pretrained(tmp_path)
    loaded = VideoTransformerFlow.from_pretrained(tmp_path).eval()
    x = _video()
    y, text = _cond(model)
    torch.testing.assert_close(loaded(x, y, text)[0], model(x, y, text)[0], rtol=0, atol=0)
    torch.testing.assert_close(loaded.denoise(x), model.denoise(x), rtol=0, atol=0)
    assert all(not p.requires_grad for p in loaded.denoiser.parameters())


def test_levels_round_decoded_frames_and_survive_save_load(tmp_path) -> None:
    from flows.image import quantise

    model = _model(levels=17)
    x = torch.rand(2, T, 1, S, S) * 2 - 1
    assert torch.equal(model.decode(x), quantise(x, 17))
    assert not torch.equal(model.decode(x), x)
    model.save_pretrained(tmp_path)
    assert VideoTransformerFlow.from_pretrained(tmp_path).config.levels == 17
    with pytest.raises(ValueError, match="levels must be null or an integer"):
        _model(levels=0)


def test_bad_inputs_raise_clear_errors() -> None:
    model = _model(**COND)
    with pytest.raises(ValueError, match="vocabulary"):
        model.encode_prompts(["a purple elephant"])
    with pytest.raises(ValueError, match="at most 4"):
        model.encode_prompts(["a 1 and a 2 moving apart"])
    with pytest.raises(ValueError, match="method"):
        VideoFlowSampler(model, method="fast")
    with pytest.raises(ValueError, match="class labels"):
        model.reverse(_video(), y=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="expected a video"):
        model(torch.randn(2, T, 3, S, S))
    with pytest.raises(ValueError, match="context_frames"):
        model.reverse(_video(), context_frames=T)


def test_out_of_range_text_ids_are_refused_before_sampling() -> None:
    model = _model(**COND)
    vocab = model.text_embed.words.num_embeddings
    bad = torch.tensor([[1, 2, 0, 0], [3, vocab, 0, 0]])
    for call in (lambda: model.reverse(_video(), text=bad),
                 lambda: VideoFlowSampler(model).sample(2, text=bad)):
        with pytest.raises(ValueError) as error:
            call()
        assert str(error.value) == f"text ids must lie in [0, {vocab}), got [0, {vocab}]"
    with pytest.raises(ValueError, match=r"must lie in \[0, \d+\), got \[-1, 2\]"):
        model.check_condition(None, torch.tensor([[-1, 2, 0, 0]]))


class _HostReads(TorchDispatchMode):
    """Counts reads of a tensor value by the host (int(t), t.item(): a device sync on GPUs)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def test_training_loss_reads_no_label_or_id_values() -> None:
    model = _model(**COND).train()
    y, text = _cond(model)
    batch = {"x": torch.rand(2, T, 1, S, S), "y": y, "text": text}
    with _HostReads() as reads:
        model.loss(batch)
    assert reads.count == 0
    with _HostReads() as reads:  # the counter works: the sampling check does read them
        model.check_condition(y, text)
    assert reads.count > 0


def test_text_embedding_compiles_into_one_graph() -> None:
    embed = TextEmbedding(10, 4, 8)
    ids = torch.tensor([[1, 2, 0, 0], [9, 3, 3, 0]])
    compiled = torch.compile(embed, backend="eager", fullgraph=True)  # a graph break raises
    torch.testing.assert_close(compiled(ids), embed(ids))


@pytest.mark.float64
def test_latent_mode_with_a_local_autoencoder(tmp_path) -> None:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        latent_channels=2,
        norm_num_groups=4,
        sample_size=8,
    )
    vae.save_pretrained(tmp_path / "vae")
    model = _model(image_size=8, patch_size=2, vae=str(tmp_path / "vae"))
    assert model.frame_shape == (2, 4, 4)
    pixels = torch.rand(2, T, 1, 8, 8) * 2 - 1
    latents = model.encode(pixels)
    z, _ = model(latents)
    back, _ = _reverse(model, z, method="sequential")
    torch.testing.assert_close(back, latents, rtol=0, atol=1e-10)
    assert model.decode(latents).shape == pixels.shape
    assert "bits_per_dim" in model.loss({"x": pixels})


def _label(solver) -> str:
    if solver.chunk_size == 1:
        return "sequential"
    return "jacobi" if solver.chunk_size is None else f"jacobi@{solver.chunk_size}"


def _forge_seconds(monkeypatch, model: VideoTransformerFlow, seconds: dict) -> None:
    """``model.reverse`` reports ``seconds[stage][label of its solver]`` as each stage's time."""
    real = model.reverse

    def reverse(*args, global_solver, local_solver, **kwargs):
        x, info = real(*args, global_solver=global_solver, local_solver=local_solver, **kwargs)
        labels = {"global": _label(global_solver), "local": _label(local_solver)}
        info["seconds"] = {stage: seconds[stage][label] for stage, label in labels.items()}
        return x, info

    monkeypatch.setattr(model, "reverse", reverse)


def test_auto_uses_observed_wall_times(monkeypatch) -> None:
    from flows.planner import AutoPlanner

    model = _model()
    z = _video()
    n, frames = model.tokens_per_frame, z.shape[1]
    window = f"jacobi@{n * frames}"
    seconds = {
        "global": {"sequential": 1.0, "jacobi": 0.5, window: 0.75},
        "local": {"sequential": 0.5, "jacobi": 1.0},
    }
    _forge_seconds(monkeypatch, model, seconds)
    planner = AutoPlanner()  # explicit runs are observations "auto" reuses
    x_seq, _ = VideoFlowSampler(model, "sequential", planner=planner).reverse(z)
    VideoFlowSampler(model, "jacobi", planner=planner).reverse(z)
    x_auto, info = VideoFlowSampler(model, "auto", planner=planner).reverse(z)
    assert info["method"] == {"global": "jacobi", "local": "sequential"}
    assert info["jacobi_chunk"]["global"] is None  # one frame: whole windows only when asked
    torch.testing.assert_close(x_auto, x_seq, rtol=0, atol=1e-3)
    # Asked for whole-window chunks, auto weighs them against sequential (best times kept).
    whole_window = VideoFlowSampler(model, "jacobi", jacobi_chunk=n * frames, planner=planner)
    x_window, _ = whole_window.reverse(z)
    seconds["global"][window], seconds["local"]["jacobi"] = 0.25, 0.4
    whole_window.reverse(z)
    auto = VideoFlowSampler(model, "auto", jacobi_chunk=n * frames, planner=planner)
    x_auto, info = auto.reverse(z)
    assert info["method"] == {"global": "jacobi", "local": "jacobi"}
    assert info["jacobi_chunk"]["global"] == n * frames
    assert sum(info["iterations_per_frame"][1:]) == 0  # one group: passes booked on frame 0
    torch.testing.assert_close(x_auto, x_window, rtol=0, atol=0)


def test_auto_tries_every_candidate_once() -> None:
    # A wrong first prediction cannot stick: auto runs each untried setting once, per stage.
    model = _model()
    attributes = dict(vars(model))
    z = _video()
    auto = VideoFlowSampler(model, "auto")
    picks = [auto.reverse(z)[1]["method"] for _ in range(3)]
    for stage in ("global", "local"):
        assert {pick[stage] for pick in picks[:2]} == {"sequential", "jacobi"}
    assert vars(model) == attributes  # the sampler, not the model, keeps what auto measured


def test_denoiser_optimizer_state_resumes_exactly(tmp_path) -> None:
    """Saving auxiliary_state() mid-training and restoring it gives bit-identical next steps."""
    import json

    from safetensors.torch import load_file, save_file

    def train(model: VideoTransformerFlow, steps: int, seed: int) -> list[float]:
        generator = torch.Generator().manual_seed(seed)
        losses = []
        for _ in range(steps):
            batch = {"x": torch.rand(2, T, 1, S, S, generator=generator) * 2 - 1}
            torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
            for _ in range(2):  # gradient accumulation over two micro-steps
                out = model.loss(batch)
            model.after_optimizer_step()
            losses.append(float(out["denoiser_loss"]))
        return losses

    model = _model().train()
    train(model, 3, seed=1)
    # a checkpoint the trainer's way: tensors to safetensors, the rest to JSON (never pickle)
    weights = {name: p.clone() for name, p in model.state_dict().items()}
    state = model.auxiliary_state().state_dict()
    tensors = {f"{index}.{name}": value for index, entry in state["state"].items()
               for name, value in entry.items()}  # fmt: skip
    save_file(tensors, tmp_path / "denoiser_optimizer.safetensors")
    (tmp_path / "denoiser_optimizer.json").write_text(json.dumps(state["param_groups"]))
    expected = train(model, 3, seed=2)

    restored: dict = {}
    for key, value in load_file(tmp_path / "denoiser_optimizer.safetensors").items():
        index, name = key.split(".")
        restored.setdefault(index, {})[name] = value  # indices come back as strings
    groups = json.loads((tmp_path / "denoiser_optimizer.json").read_text())
    resumed = _model().train()
    resumed.load_state_dict(weights)
    resumed.auxiliary_state().load_state_dict({"state": restored, "param_groups": groups})
    assert train(resumed, 3, seed=2) == expected
    fresh = _model().train()
    fresh.load_state_dict(weights)
    assert train(fresh, 3, seed=2) != expected  # without the Adam moments the steps differ
    model.loss({"x": torch.rand(2, T, 1, S, S)})
    with pytest.raises(RuntimeError, match="gradients of 1 micro-steps not yet applied"):
        model.auxiliary_state().state_dict()
    assert _model(learned_denoiser=False).auxiliary_state() is None
