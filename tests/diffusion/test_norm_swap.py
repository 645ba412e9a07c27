"""Norm swap inside diffusers UNets / ControlNet: every GroupNorm replaced, trainable, savable."""

from __future__ import annotations

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel, UNet2DModel
from torch import nn

import norms
from diffusion.norm_swap import count_group_norms, load_swapped, swap_norms

MAP_NORMS = norms.available_norms("maps")
RUNNING = [n for n in MAP_NORMS if norms.norm_spec(n).running_stats]


def tiny_unet() -> UNet2DModel:
    return UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=4, attention_head_dim=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )


def tiny_cond_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=4, attention_head_dim=8, cross_attention_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )


def group_norm_paths(model: nn.Module) -> dict[str, int]:
    return {name: m.num_channels for name, m in model.named_modules()
            if isinstance(m, nn.GroupNorm)}


@pytest.mark.parametrize("norm", MAP_NORMS)
def test_swap_unet_forward_backward_save_load(norm: str, tmp_path) -> None:
    unet = tiny_unet()
    paths = group_norm_paths(unet)
    assert any("attentions" in p for p in paths) and "conv_norm_out" in paths
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 700])
    reference_shape = unet(x, t).sample.shape
    assert swap_norms(unet, norm) == len(paths)
    modules = dict(unet.named_modules())
    for path, channels in paths.items():
        assert type(modules[path]) is type(norms.build_norm(norm, channels)), path
    if norm != "groupnorm":
        assert count_group_norms(unet) == 0
    out = unet(x, t).sample
    assert out.shape == reference_shape and torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in unet.named_parameters():
        if p.requires_grad and "norm" not in name:
            assert p.grad is not None, name
    unet.eval()
    unet.save_pretrained(tmp_path)
    loaded = load_swapped(UNet2DModel, tmp_path)
    with torch.no_grad():
        assert torch.equal(unet(x, t).sample, loaded(x, t).sample)
    assert type(dict(loaded.named_modules())[next(iter(paths))]) is type(
        modules[next(iter(paths))])


@pytest.mark.parametrize("norm", MAP_NORMS)
def test_swap_controlnet_and_conditional_unet(norm: str) -> None:
    unet = tiny_cond_unet()
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8,))
    n_unet, n_control = len(group_norm_paths(unet)), len(group_norm_paths(controlnet))
    assert swap_norms(unet, norm) == n_unet and swap_norms(controlnet, norm) == n_control
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([5, 900])
    tokens, cond = torch.randn(2, 1, 8), torch.randn(2, 3, 8, 8)
    down, mid = controlnet(x, t, encoder_hidden_states=tokens, controlnet_cond=cond,
                           return_dict=False)
    out = unet(x, t, encoder_hidden_states=tokens, down_block_additional_residuals=down,
               mid_block_additional_residual=mid).sample
    assert out.shape == x.shape
    out.square().mean().backward()
    assert controlnet.controlnet_cond_embedding.conv_in.weight.grad is not None


@pytest.mark.float64
@pytest.mark.parametrize("norm", RUNNING)
def test_running_stats_norms_train_eval_consistent(norm: str) -> None:
    # Running statistics converge to the statistics of a repeated batch: eval then matches
    # train mode (up to the unbiased-variance factor of the running variance).
    unet = tiny_unet().double()
    swap_norms(unet, norm, momentum=0.5)
    x, t = torch.randn(8, 3, 8, 8), torch.tensor([3, 100, 400, 999] * 2)
    unet.train()
    with torch.no_grad():
        for _ in range(40):
            train_out = unet(x, t).sample
        unet.eval()
        eval_out = unet(x, t).sample
        other = unet(x[:2], t[:2]).sample  # eval: no batch dependence
    err = (eval_out - train_out).norm() / train_out.norm()
    assert err < 0.05
    assert torch.allclose(other, eval_out[:2], atol=1e-10)


def test_unknown_norm_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not a map norm"):
        swap_norms(tiny_unet(), "layernorm_tokens_only")
