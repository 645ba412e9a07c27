"""Normal-adapted / normal-aligned models: training lowers the loss, pipelines round-trip,
configs train through the real trainer and the checkpoints sample through diffusion.sampling."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import default_collate

from diffusion.data import NormalMapDataset
from diffusion.models import NormalAdaptedDiffusion, NormalAlignedDiffusion
from diffusion.pipelines import NormalAdaptedPipeline, NormalAlignedPipeline
from diffusion.sample import main as sample_main
from diffusion.sampling import load_normal_map_png, sample_aligned, sample_normals
from tests.diffusion.helpers import fixed_loss, train_config, train_steps

TINY = dict(resolution=16, block_out_channels=(8, 16), norm_num_groups=4)


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    data = NormalMapDataset(16, num_samples=8, seed=0, max_steps=48)
    return default_collate([data[i] for i in range(8)])


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [(NormalAdaptedDiffusion, {"norm": "groupnorm"}),
     (NormalAdaptedDiffusion, {"norm": "evonorm_s0"}),
     (NormalAdaptedDiffusion, {"patch_size": 2, "prediction_type": "v_prediction",
                               "beta_schedule": "squaredcos_cap_v2"}),
     (NormalAlignedDiffusion, {"conditioning": "concat"}),
     (NormalAlignedDiffusion, {"conditioning": "concat", "patch_size": 2,
                               "prediction_type": "v_prediction"}),
     (NormalAlignedDiffusion, {"conditioning": "both", "norm": "batchnorm"})],
)
def test_training_steps_lower_the_loss(cls, kwargs, batch) -> None:
    model = cls(**TINY, **kwargs)
    before = fixed_loss(model, batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    train_steps(model, batch, optimizer)
    assert fixed_loss(model, batch) < 0.8 * before


def test_label_and_condition_dropout_reach_the_null_inputs(batch) -> None:
    model = NormalAdaptedDiffusion(**TINY, condition_dropout=0.5)
    seen = []
    model.unet.forward = lambda x, t, class_labels: seen.append(class_labels) or type(
        "Out", (), {"sample": torch.zeros_like(x)})()
    torch.manual_seed(0)
    model.loss(batch)
    assert (seen[0] == model.null_label).any() and (seen[0] != model.null_label).any()
    model.eval()
    model.loss(batch)
    assert torch.equal(seen[1], batch["y"])
    # Condition dropout: some normal maps become the all-zero null condition, the rest pass.
    aligned = NormalAlignedDiffusion(**TINY, condition_dropout=0.5)
    maps = []
    aligned.denoise = lambda x, t, normals: maps.append(normals) or torch.zeros_like(x)
    torch.manual_seed(0)
    aligned.loss(batch)
    dropped = (maps[0] == 0).flatten(1).all(dim=1)
    assert dropped.any() and not dropped.all()
    assert torch.equal(maps[0][~dropped], batch["x"][~dropped])
    aligned.eval()
    aligned.loss(batch)
    assert torch.equal(maps[1], batch["x"])


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_pipelines_round_trip_identical_samples(sampler: str, batch, tmp_path) -> None:
    adapted = NormalAdaptedPipeline(NormalAdaptedDiffusion(**TINY, norm="evonorm_b0"))
    aligned = NormalAlignedPipeline(NormalAlignedDiffusion(**TINY, conditioning="both"))
    for name, pipe, kwargs in [
        ("adapted", adapted, {"prompt": "back view, only head", "num": 2}),
        ("aligned", aligned, {"normals": batch["x"][:2]}),
    ]:
        pipe.save_pretrained(tmp_path / name)
        loaded = type(pipe).from_pretrained(tmp_path / name)
        assert type(loaded.model) is type(pipe.model)
        a = pipe(**kwargs, generator=torch.Generator().manual_seed(7), steps=4, sampler=sampler)
        b = loaded(**kwargs, generator=torch.Generator().manual_seed(7), steps=4,
                   sampler=sampler)
        c = loaded(**kwargs, generator=torch.Generator().manual_seed(8), steps=4,
                   sampler=sampler)
        assert a.shape == (2, 3, 16, 16) and a.abs().max() <= 1.0
        assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.float64
def test_models_run_in_float64(batch) -> None:
    model = NormalAdaptedDiffusion(**TINY).double()
    b64 = {k: (v.double() if v.is_floating_point() else v) for k, v in batch.items()}
    loss = model.loss(b64)["loss"]
    assert loss.dtype == torch.float64
    out = model.sample_for_logging(2, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float64 and out.min() >= 0 and out.max() <= 1


def test_configs_train_and_checkpoints_sample(tmp_path, capsys) -> None:
    adapted = train_config("normal_adapted.yaml", tmp_path / "adapted", "model.norm=batchnorm")
    aligned = train_config("normal_aligned.yaml", tmp_path / "aligned")
    assert (adapted / "checkpoint-2" / "ema").is_dir()
    summary = sample_normals(adapted, "left side view, upper body", num=3, seed=0,
                             out=tmp_path / "n.png", steps=2, guidance=2.0, device="cpu")
    assert summary["label"] == 2 * 3 + 1 and Path(summary["out"]).is_file()
    assert 0.0 <= summary["back_facing"] <= 1.0 and summary["norm_error"] >= 0.0
    # Chain: a rendered map (known foreground) -> aligned images.
    maps, _, columns = load_normal_map_png(summary["out"], 16)
    assert maps.shape == (3, 3, 16, 16) and columns == 3
    summary = sample_aligned(aligned, summary["out"], num=2, seed=0, out=tmp_path / "c.png",
                             steps=2, guidance=1.5, device="cpu")
    assert Path(summary["out"]).is_file() and -1.0 <= summary["shading_correlation"] <= 1.0
    capsys.readouterr()
    assert sample_main(["--checkpoint", str(adapted), "--prompt", "front view",
                        "--out", str(tmp_path / "m.png"), "--num", "1", "--steps", "1"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["label"] == 0
    assert sample_main(["--checkpoint", str(aligned), "--prompt", "front view",
                        "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "normal_aligned" in err[0]
    assert sample_main(["--checkpoint", str(aligned), "--normal-map",
                        str(tmp_path / "missing.png"), "--out", str(tmp_path / "x.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # The top-level sample.py dispatches both kinds on the checkpoint's model.name.
    import sample

    normals = tmp_path / "top_normals.png"
    assert sample.main(["--checkpoint", str(adapted), "--prompt", "back view, full body",
                        "--num", "2", "--steps", "1", "--out", str(normals)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == "normal_adapted" and summary["num"] == 2 and normals.is_file()
    assert sample.main(["--checkpoint", str(aligned), "--normal-map", str(normals),
                        "--num", "2", "--steps", "1", "--out", str(tmp_path / "top.png")]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "normal_aligned"
    assert sample.main(["--checkpoint", str(aligned), "--out", str(tmp_path / "y.png")]) == 2
    assert "needs --normal-map" in capsys.readouterr().err


def _oracle_prediction(kind: str, x, x0, abar_t):
    """The exact ``kind`` prediction for data concentrated on ``x0``, given noisy ``x``."""
    a = abar_t.view(-1, 1, 1, 1)
    eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
    if kind == "epsilon":
        return eps
    if kind == "v_prediction":
        return a.sqrt() * eps - (1 - a).sqrt() * x0
    return x0.expand_as(x)


@pytest.mark.float64
@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
@pytest.mark.parametrize(("kind", "schedule"), [("epsilon", "linear"),
                                                ("v_prediction", "squaredcos_cap_v2"),
                                                ("sample", "squaredcos_cap_v2")])
def test_guided_sampling_recovers_the_data_point_of_an_oracle_denoiser(
    sampler: str, kind: str, schedule: str
) -> None:
    # For data concentrated on one point x0 the exact prediction of every kind is known from
    # x_t and x0; DDIM / DPM-Solver must then land on x0.
    from diffusion.models import training_scheduler
    from diffusion.pipelines import guided_sample

    scheduler = training_scheduler(prediction_type=kind, beta_schedule=schedule)
    abar = scheduler.alphas_cumprod.double()
    x0 = torch.rand(2, 3, 4, 4, dtype=torch.float64) * 1.6 - 0.8

    def oracle(x, t, conditional):
        target = x0 if conditional else torch.zeros_like(x0)
        return _oracle_prediction(kind, x, target, abar[t])

    for guidance in (1.0, 1.0 + 1e-9):
        out = guided_sample(oracle, scheduler, x0.shape, torch.Generator().manual_seed(0),
                            steps=10, guidance_scale=guidance, sampler=sampler,
                            dtype=torch.float64)
        assert torch.allclose(out, x0, atol=1e-4)
    # Guidance extrapolates from the unconditional target (0) through the conditional one.
    out = guided_sample(oracle, scheduler, x0.shape, torch.Generator().manual_seed(0),
                        steps=10, guidance_scale=0.0, sampler=sampler, dtype=torch.float64)
    assert out.abs().max() < 1e-4


@pytest.mark.float64
@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_the_loss_target_is_the_prediction_type(kind: str, batch) -> None:
    # A network that returns the exact target of its prediction type has zero loss; one that
    # returns another kind's target does not.
    model = NormalAdaptedDiffusion(**TINY, prediction_type=kind,
                                   beta_schedule="squaredcos_cap_v2")
    x0 = batch["x"].double()
    abar = model.scheduler.alphas_cumprod.double()

    def predict_as(which):
        def denoise(x, t, labels):
            return _oracle_prediction(which, x, x0, abar[t])
        return denoise

    model.denoise = predict_as(kind)
    assert float(model.loss({"x": x0, "y": batch["y"]})["loss"]) < 1e-20
    other = "sample" if kind != "sample" else "epsilon"
    model.denoise = predict_as(other)
    assert float(model.loss({"x": x0, "y": batch["y"]})["loss"]) > 1e-3


@pytest.mark.parametrize("cls", [NormalAdaptedDiffusion, NormalAlignedDiffusion])
def test_attention_on_a_level_narrower_than_the_deepest_runs(cls, batch) -> None:
    # One head size serves every attention level: with 8 channels at the first level and 16
    # at the second it must divide 8 (a head of 16 would leave that level with 0 heads).
    model = cls(resolution=16, block_out_channels=(8, 16), norm_num_groups=4,
                attention_levels=2)
    assert torch.isfinite(model.loss(batch)["loss"])


def test_mask_background_blacks_out_only_the_conditions_background(batch) -> None:
    from diffusion.pipelines import sample_aligned_images

    torch.manual_seed(0)
    plain = NormalAlignedDiffusion(**TINY)
    masked = NormalAlignedDiffusion(**TINY, mask_background=True)
    masked.load_state_dict(plain.state_dict())
    cond, mask = batch["x"][:3], batch["mask"][:3].unsqueeze(1).expand(-1, 3, -1, -1)
    a = sample_aligned_images(plain, cond, torch.Generator().manual_seed(1), steps=2)
    b = sample_aligned_images(masked, cond, torch.Generator().manual_seed(1), steps=2)
    assert (a[~mask] != -1).any() and (b[~mask] == -1).all()
    assert torch.equal(a[mask], b[mask])
    # The null condition (zeros) has no background: unconditioned samples are left as they are.
    null = torch.zeros_like(cond)
    torch.testing.assert_close(
        sample_aligned_images(masked, null, torch.Generator().manual_seed(1), steps=2),
        sample_aligned_images(plain, null, torch.Generator().manual_seed(1), steps=2))


def test_patches_keep_every_pixel(batch) -> None:
    model = NormalAdaptedDiffusion(**TINY, patch_size=2)
    assert model.unet.config.sample_size == 8 and model.unet.config.in_channels == 12
    seen = []

    def unet(x, t, class_labels):
        seen.append(x)
        return type("Out", (), {"sample": x})()

    model.unet.forward = unet
    t = torch.zeros(len(batch["x"]), dtype=torch.long)
    out = model.denoise(batch["x"], t, batch["y"])
    # The network sees each 2x2 patch as 12 channels; the inverse puts every pixel back.
    assert seen[0].shape == (8, 12, 8, 8)
    torch.testing.assert_close(seen[0][:, :4, 0, 0].reshape(8, 2, 2), batch["x"][:, 0, :2, :2])
    assert torch.equal(out, batch["x"])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"prediction_type": "noise"}, "prediction_type 'noise' is unknown"),
    ({"beta_schedule": "cosine"}, "beta_schedule 'cosine' is unknown"),
    ({"patch_size": 3}, "patch_size 3 must be >= 1 and divide the side 16"),
    ({"patch_size": 16}, "side 1 (resolution / patch_size) must be divisible by 2"),
    ({"sampler": "euler"}, "sampler 'euler' is unknown"),
    ({"sample_steps": 0}, "sample_steps must be >= 1"),
])
def test_bad_recipe_values_are_refused(kwargs, message) -> None:
    for cls in (NormalAdaptedDiffusion, NormalAlignedDiffusion):
        with pytest.raises(ValueError, match=re.escape(message)):
            cls(**TINY, **kwargs)
