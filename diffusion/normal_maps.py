"""Normal maps as images: encode, decode, flip, masked resize, quality, normals from depth.

References:
    Huang, Huang, Chen, Xu, Guo. HumanNorm: Learning Normal Diffusion Model for High-quality and
        Realistic 3D Human Generation. CVPR 2024, arXiv:2310.01406 (rgb = (n + 1) / 2 on a
        black background, camera-space normals).
    Scharstein, Hirschmuller, et al. High-resolution stereo datasets with subpixel-accurate
        ground truth. GCPR 2014 (the Middlebury motorcycle pair shipped by scikit-image).

Every helper works on channels-first tensors ``(..., 3, H, W)`` with a mask ``(..., H, W)``
(bool). Camera convention (OpenGL): x right, y up, the camera looks down -z, so visible
surfaces have n_z > 0. The background is black (rgb 0) and is recognised by its mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "decode_normals",
    "depth_to_normals",
    "encode_normals",
    "flip_normals",
    "foreground_mask",
    "motorcycle_normals",
    "normal_quality",
    "resize_normals",
    "shading_correlation",
]


def _check_maps(normals: torch.Tensor, what: str) -> None:
    if normals.dim() < 3 or normals.shape[-3] != 3:
        raise ValueError(f"{what} must have shape (..., 3, H, W); got {tuple(normals.shape)}")


def encode_normals(normals: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RGB image in [0, 1]: ``(n + 1) / 2`` on the mask, black elsewhere."""
    _check_maps(normals, "normals")
    rgb = (normals + 1.0) / 2.0
    return torch.where(mask.unsqueeze(-3), rgb, torch.zeros_like(rgb)).clamp(0.0, 1.0)


def foreground_mask(rgb: torch.Tensor, threshold: float = 0.2) -> torch.Tensor:
    """Pixels of an encoded map that are not (near-)black background.

    A unit normal always has a channel with |n_i| >= 1/sqrt(3), so some rgb channel is at
    least (1 + 0.577) / 2 or the map is far from black; background is 0.
    """
    _check_maps(rgb, "rgb")
    return rgb.amax(dim=-3) > threshold


def decode_normals(
    rgb: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit normals from an rgb map: ``normalize(2 rgb - 1)`` on the mask, zero elsewhere.

    Returns ``(normals, mask, raw_length)`` where ``raw_length`` is ``||2 rgb - 1||`` before
    renormalisation (the quality measure of generated maps).
    """
    _check_maps(rgb, "rgb")
    if mask is None:
        mask = foreground_mask(rgb)
    raw = 2.0 * rgb - 1.0
    length = raw.norm(dim=-3)
    unit = raw / length.clamp_min(1e-12).unsqueeze(-3)
    unit = torch.where(mask.unsqueeze(-3), unit, torch.zeros_like(unit))
    return unit, mask, length


def flip_normals(normals: torch.Tensor) -> torch.Tensor:
    """Horizontal mirror image: flip the width axis and negate n_x (a mirror reverses x)."""
    _check_maps(normals, "normals")
    flipped = normals.flip(-1).clone()
    flipped[..., 0, :, :] = -flipped[..., 0, :, :]
    return flipped


def resize_normals(
    normals: torch.Tensor, mask: torch.Tensor, size: int | tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize with the mask (no background bleeding) and renormalise to unit length.

    Normals are averaged over foreground pixels only (bilinear weights divided by the resized
    mask); a pixel is foreground when at least half of its bilinear weight is.
    """
    _check_maps(normals, "normals")
    lead = normals.shape[:-3]
    n = normals.reshape(-1, 3, *normals.shape[-2:])
    m = mask.reshape(-1, 1, *mask.shape[-2:]).to(n.dtype)
    num = F.interpolate(n * m, size=size, mode="bilinear", align_corners=False, antialias=True)
    den = F.interpolate(m, size=size, mode="bilinear", align_corners=False, antialias=True)
    avg = num / den.clamp_min(1e-12)
    length = avg.norm(dim=1, keepdim=True)
    new_mask = (den > 0.5) & (length > 1e-6)
    unit = torch.where(new_mask, avg / length.clamp_min(1e-12), torch.zeros_like(avg))
    out_hw = unit.shape[-2:]
    return unit.reshape(*lead, 3, *out_hw), new_mask.reshape(*lead, *out_hw)


def normal_quality(x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, float]:
    """Quality of generated maps ``x`` in [-1, 1] (the model's output space), foreground only.

    ``norm_error``: mean | ||n|| - 1 | before renormalisation; ``back_facing``: fraction of
    foreground normals with n_z < 0; ``foreground``: foreground fraction of all pixels.
    """
    _check_maps(x, "x")
    rgb = ((x + 1.0) / 2.0).clamp(0.0, 1.0)
    _, mask, length = decode_normals(rgb, mask)
    raw = 2.0 * rgb - 1.0
    count = int(mask.sum())
    if count == 0:
        return {"norm_error": float("nan"), "back_facing": float("nan"), "foreground": 0.0}
    return {
        "norm_error": float((length - 1.0).abs()[mask].mean()),
        "back_facing": float((raw[..., 2, :, :] < 0)[mask].to(x.dtype).mean()),
        "foreground": float(mask.to(x.dtype).mean()),
    }


def depth_to_normals(
    depth: torch.Tensor, mask: torch.Tensor | None = None, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera-space unit normals ``(3, H, W)`` of a depth map ``(H, W)`` (larger = farther).

    The surface is z = -scale * depth(u, v) with u right and v up in pixel units, so
    n ~ (scale * d depth/du, scale * d depth/dv, 1) (n_z > 0 everywhere). Central differences;
    pixels whose stencil leaves the mask are dropped from the mask.
    """
    if depth.dim() != 2:
        raise ValueError(f"depth must have shape (H, W); got {tuple(depth.shape)}")
    if mask is None:
        mask = torch.isfinite(depth)
    d = torch.where(mask, depth, torch.zeros_like(depth))
    du = torch.zeros_like(d)
    dv = torch.zeros_like(d)
    du[:, 1:-1] = (d[:, 2:] - d[:, :-2]) / 2.0
    dv[1:-1, :] = (d[:-2, :] - d[2:, :]) / 2.0  # rows go down, v goes up
    valid = mask.clone()
    valid[:, 1:-1] &= mask[:, 2:] & mask[:, :-2]
    valid[1:-1, :] &= mask[:-2, :] & mask[2:, :]
    valid[0, :] = valid[-1, :] = False
    valid[:, 0] = valid[:, -1] = False
    n = torch.stack([scale * du, scale * dv, torch.ones_like(d)])
    n = n / n.norm(dim=0, keepdim=True)
    return torch.where(valid, n, torch.zeros_like(n)), valid


def motorcycle_normals(
    size: int = 64, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normals ``(3, size, size)`` and mask from scikit-image's stereo_motorcycle disparity.

    Real data nobody rendered: depth = focal * baseline / disparity (Middlebury calibration
    numbers are not needed for directions up to a global scale, which ``scale`` absorbs); the
    centre square crop is resized with the mask and renormalised.
    """
    from skimage import data

    _, _, disparity = data.stereo_motorcycle()
    disp = torch.as_tensor(disparity, dtype=dtype or torch.get_default_dtype())
    h, w = disp.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    disp = disp[top:top + side, left:left + side]
    mask = torch.isfinite(disp) & (disp > 0)
    depth = torch.where(mask, 1.0 / disp.clamp_min(1e-6), torch.zeros_like(disp))
    depth = depth / depth[mask].median()  # unit median depth
    normals, valid = depth_to_normals(depth, mask, scale=side / 4.0)
    return resize_normals(normals, valid, size)


def shading_correlation(
    images: torch.Tensor, normals: torch.Tensor, mask: torch.Tensor, light: torch.Tensor
) -> float:
    """Pearson correlation of image luminance with Lambertian shading max(n.l, 0), on the mask.

    ``images`` in [-1, 1] ``(B, 3, H, W)``; ``normals`` unit ``(B, 3, H, W)``; ``light`` (3,).
    Computed per image and averaged over images with at least 8 foreground pixels (NaN if none).
    """
    _check_maps(images, "images")
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
    luminance = torch.einsum("bchw,c->bhw", (images + 1.0) / 2.0, weights)
    shading = torch.einsum("bchw,c->bhw", normals.to(images.dtype),
                           light.to(images.dtype)).clamp_min(0.0)
    values = []
    for lum, sh, m in zip(luminance, shading, mask, strict=True):
        if int(m.sum()) < 8:
            continue
        a, b = lum[m] - lum[m].mean(), sh[m] - sh[m].mean()
        denom = (a.norm() * b.norm()).clamp_min(1e-12)
        values.append(float((a * b).sum() / denom))
    return float(sum(values) / len(values)) if values else float("nan")
