"""Renderer and normal-map helpers: unit normals, visibility, view buckets, flip/resize."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion.data import NormalMapDataset, label_to_prompt, prompt_to_label
from diffusion.normal_maps import (
    decode_normals,
    depth_to_normals,
    encode_normals,
    flip_normals,
    normal_quality,
    resize_normals,
)
from diffusion.render import (
    Camera,
    NormalMapRenderer,
    random_mannequin,
    random_primitives,
    sample_camera,
    view_bucket,
)


@pytest.mark.float64
@pytest.mark.parametrize("seed", [0, 1])
def test_rendered_normals_are_unit_and_face_the_camera(seed: int) -> None:
    rng = np.random.default_rng(seed)
    renderer = NormalMapRenderer(24, max_steps=64)
    for scene in (random_mannequin(rng), random_primitives(rng)):
        out = renderer.render(scene, sample_camera(rng, *scene.framings[0]))
        assert out.normals.dtype == torch.float64
        n = out.normals[out.mask]
        assert out.mask.sum() > 20
        assert torch.allclose(n.norm(dim=-1), torch.ones(len(n)), atol=1e-6)
        assert (n[:, 2] > 0).all()
        assert (out.normals[~out.mask] == 0).all() and (out.depth[~out.mask] == 0).all()
        assert (out.parts[out.mask] > 0).all() and (out.parts[~out.mask] == 0).all()
        assert out.color.min() >= 0 and out.color.max() <= 1


def test_sphere_normals_match_geometry() -> None:
    # A unit sphere seen from the front: camera-space normal = (u, v, sqrt(1 - u^2 - v^2)).
    scene = random_primitives(np.random.default_rng(0))
    scene.capsules = np.array([[0, 0, 0, 0, 0, 0, 0.8]], dtype=np.float64)
    scene.capsule_parts = np.array([17])
    scene.boxes, scene.tori = np.zeros((0, 13)), np.zeros((0, 5))
    camera = Camera(azimuth=30.0, elevation=5.0, center=(0.0, 0.0, 0.0), half_extent=1.0)
    out = NormalMapRenderer(32, max_steps=100, dtype=torch.float64).render(scene, camera)
    coords = (torch.arange(32, dtype=torch.float64) + 0.5) / 32 * 2 - 1
    v, u = torch.meshgrid(-coords, coords, indexing="ij")
    expected = torch.stack([u, v, (0.64 - u**2 - v**2).clamp_min(0).sqrt()], -1) / 0.8
    inner = (u**2 + v**2) < 0.7**2
    assert out.mask[inner].all() and not out.mask[(u**2 + v**2) > 0.81**2].any()
    assert torch.allclose(out.normals[inner], expected[inner], atol=1e-3)


def test_view_bucket_matches_azimuth_and_mannequin_side() -> None:
    assert [view_bucket(a) for a in (0, 44, -44, 46, 134, -46, -134, 136, -179, 180, 360)] == [
        0, 0, 0, 2, 2, 3, 3, 1, 1, 1, 0]
    rng = np.random.default_rng(0)
    scene = random_mannequin(rng, neutral=True)
    renderer = NormalMapRenderer(24, max_steps=64, dtype=torch.float64)
    # The nose points +z (the mannequin's front): visible from the front, hidden from the back.
    nose = 2
    head = scene.framings[2]
    front = renderer.render(scene, Camera(0.0, 0.0, *head))
    back = renderer.render(scene, Camera(180.0, 0.0, *head))
    left = renderer.render(scene, Camera(90.0, 0.0, *head))
    assert (front.parts == nose).sum() > 0 and (back.parts == nose).sum() == 0
    cols = torch.arange(24, dtype=torch.float64)
    nose_col = cols.expand(24, 24)[left.parts == nose].mean()
    head_col = cols.expand(24, 24)[left.mask].mean()
    # Camera at the mannequin's left (+x) looking along -x: image right is world -z (the
    # mannequin's back), so the nose (front, +z) lies left of the head's centre.
    assert nose_col < head_col
    assert view_bucket(90.0) == 2  # "left side view"


@pytest.mark.float64
def test_encode_decode_flip_resize_keep_unit_length() -> None:
    rng = np.random.default_rng(3)
    scene = random_mannequin(rng)
    out = NormalMapRenderer(32, max_steps=64).render(scene, sample_camera(rng, *scene.framings[0]))
    normals, mask = out.normals.permute(2, 0, 1), out.mask
    rgb = encode_normals(normals, mask)
    decoded, dmask, length = decode_normals(rgb)
    assert torch.equal(dmask, mask)
    assert torch.allclose(decoded, normals, atol=1e-12)
    assert torch.allclose(length[mask], torch.ones(int(mask.sum())), atol=1e-12)
    flipped = flip_normals(normals)
    assert torch.allclose(flipped[0], -normals[0].flip(-1))
    assert torch.allclose(flip_normals(flipped), normals)
    assert torch.allclose(flipped.norm(dim=0)[mask.flip(-1)], torch.ones(int(mask.sum())))
    for size in (16, 48):
        small, smask = resize_normals(normals, mask, size)
        assert small.shape == (3, size, size) and smask.shape == (size, size)
        assert smask.sum() > 0
        assert torch.allclose(small.norm(dim=0)[smask], torch.ones(int(smask.sum())), atol=1e-12)
        assert (small[:, ~smask] == 0).all()
        assert (small[2][smask] > 0).all()
    q = normal_quality(2 * rgb - 1)
    assert q["norm_error"] < 1e-12 and q["back_facing"] == 0.0


@pytest.mark.float64
def test_depth_to_normals_of_a_plane() -> None:
    # depth = 0.1 * u (farther to the right) -> surface tilts away: n ~ (0.1 * scale, 0, 1).
    u = torch.arange(10, dtype=torch.float64).expand(8, 10)
    n, valid = depth_to_normals(0.1 * u, scale=2.0)
    expected = torch.tensor([0.2, 0.0, 1.0], dtype=torch.float64)
    expected = expected / expected.norm()
    assert valid.sum() == 6 * 8
    assert torch.allclose(n[:, valid].T, expected.expand(48, 3), atol=1e-12)


def test_dataset_items_and_prompts() -> None:
    data = NormalMapDataset(resolution=16, num_samples=6, seed=0, flip=True, max_steps=48)
    assert len(data) == 6
    for i in range(len(data)):
        item = data[i]
        x, mask = item["x"], item["mask"]
        assert x.shape == (3, 16, 16) and item["color"].shape == (3, 16, 16)
        assert torch.allclose(x.norm(dim=0)[mask], torch.ones(int(mask.sum())), atol=1e-5)
        assert (x[:, ~mask] == -1).all()
        assert int(item["y"]) == int(item["view"]) * 3 + int(item["framing"])
    for label in range(12):
        assert prompt_to_label(label_to_prompt(label)) == label
    assert prompt_to_label("left side view, only head") == 2 * 3 + 2
    with pytest.raises(ValueError, match="exactly one view"):
        prompt_to_label("a cat")


def test_motorcycle_normals_from_real_disparity() -> None:
    from diffusion.normal_maps import motorcycle_normals

    normals, mask = motorcycle_normals(24)
    assert normals.shape == (3, 24, 24) and mask.float().mean() > 0.5
    assert torch.allclose(normals.norm(dim=0)[mask], torch.ones(int(mask.sum())), atol=1e-5)
    assert (normals[2][mask] > 0).all()
    assert normals[:2, mask].std(dim=1).min() > 0.02  # real geometry, not a flat plane
