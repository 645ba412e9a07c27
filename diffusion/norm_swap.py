"""Swap every GroupNorm inside a diffusers network for any map norm of ``norms/`` by name.

References:
    Wu, He. Group Normalization. ECCV 2018, arXiv:1803.08494 (the norm diffusers hard-codes).
    Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. NeurIPS 2020, arXiv:2006.11239
        (the UNet family whose norms are swapped).

diffusers builds ``nn.GroupNorm`` directly (resnet ``norm1``/``norm2``, attention
``group_norm``, transformer ``norm``, ``conv_norm_out``), so a different norm needs module
replacement after construction. The attention ``group_norm`` sees ``(B, C, H*W)``: every map norm
accepts ``(B, C, *)``. The swap is recorded in the model's config (private key
``_norm_swap``), so :func:`load_swapped` rebuilds a saved swapped model from its folder alone.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from torch import nn

import norms

__all__ = ["count_group_norms", "load_swapped", "swap_norms"]


def _options_for(name: str, group_norm: nn.GroupNorm, options: dict[str, Any]) -> dict[str, Any]:
    """Carry the replaced layer's group count and eps over where the new norm takes them."""
    accepted = set(list(inspect.signature(norms.norm_spec(name).factory).parameters)[1:])
    carried: dict[str, Any] = {}
    for key in ("num_groups", "groups"):
        if key in accepted:
            carried[key] = group_norm.num_groups
    carried.update(options)
    return carried


def count_group_norms(model: nn.Module) -> int:
    """Number of ``nn.GroupNorm`` modules left in ``model``."""
    return sum(isinstance(m, nn.GroupNorm) for m in model.modules())


def swap_norms(model: nn.Module, norm: str, **options: Any) -> int:
    """Replace every ``nn.GroupNorm`` in ``model`` by ``norms.build_norm(norm, C, **options)``.

    ``groupnorm`` is also rebuilt (the library's GroupNorm) so every choice goes through the same
    path. The group count of the replaced layer is passed on to norms taking ``num_groups`` /
    ``groups``; ``options`` override it. New layers take the replaced layer's device and dtype.
    Returns how many layers were replaced.

    Example:
        >>> from diffusers import UNet2DModel
        >>> unet = UNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4,
        ...     down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        ...     up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1)
        >>> swap_norms(unet, "evonorm_s0") > 0, count_group_norms(unet)
        (True, 0)
    """
    if norm not in norms.available_norms("maps"):
        raise ValueError(
            f"norm {norm!r} is not a map norm; choose one of: "
            f"{', '.join(norms.available_norms('maps'))}"
        )
    replaced = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, nn.GroupNorm):
                continue
            layer = norms.build_norm(norm, child.num_channels, **_options_for(norm, child, options))
            reference = child.weight if child.weight is not None else None
            if reference is not None:
                layer = layer.to(device=reference.device, dtype=reference.dtype)
            setattr(parent, child_name, layer)
            replaced += 1
    if hasattr(model, "register_to_config"):
        model.register_to_config(_norm_swap={"norm": norm, "options": dict(options)})
    return replaced


def load_swapped(model_cls: type, folder: str | Path, **kwargs: Any) -> nn.Module:
    """Load a swapped diffusers model saved with ``save_pretrained`` (norm read from config).

    ``model_cls.from_pretrained`` alone would rebuild GroupNorms and fail to load the swapped
    weights; this builds from the config, swaps, then loads the state dict strictly.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} holds no config.json (not a save_pretrained folder)")
    config = model_cls.load_config(folder)
    swap = config.get("_norm_swap")
    model = model_cls.from_config(config, **kwargs)
    if swap is not None:
        swap_norms(model, swap["norm"], **swap.get("options", {}))
    weights = folder / "diffusion_pytorch_model.safetensors"
    if not weights.exists():  # a .bin would be a pickle: never read
        raise FileNotFoundError(f"{folder} holds no diffusion_pytorch_model.safetensors")
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval()
