"""diffusion.metrics: decoded maps as a user gets them, and the view / framing probe."""

from __future__ import annotations

import pytest
import torch

from diffusion.data import NormalMapDataset
from diffusion.metrics import (
    ViewProbe,
    _mirror,
    clean_normal_maps,
    probe_accuracy,
    train_view_probe,
)


@pytest.fixture(scope="module")
def renders() -> dict[str, torch.Tensor]:
    return NormalMapDataset(16, num_samples=6, seed=3, flip=False, max_steps=48).data


def test_clean_maps_keep_renders_and_renormalise_samples(renders) -> None:
    maps, mask = clean_normal_maps(renders["x"])
    assert torch.equal(mask, renders["mask"])
    torch.testing.assert_close(maps, renders["x"])
    # A sample whose normals are 20% short decodes to the unit normals of the render.
    m = renders["mask"].unsqueeze(1)
    short = torch.where(m, 0.8 * renders["x"], renders["x"])
    torch.testing.assert_close(clean_normal_maps(short)[0], renders["x"])


def test_mirror_swaps_left_and_right_and_is_its_own_inverse(renders) -> None:
    views = torch.tensor([0, 1, 2, 3, 2, 3])
    flipped, swapped = _mirror(renders["x"], views)
    assert swapped.tolist() == [0, 1, 3, 2, 3, 2]
    # Mirror image: columns reversed, n_x negated on the foreground, background stays -1.
    fg = renders["mask"].flip(-1).unsqueeze(1)
    expected = renders["x"].flip(-1) * torch.tensor([-1.0, 1.0, 1.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(flipped, torch.where(fg, expected, torch.tensor(-1.0)))
    back, views_back = _mirror(flipped, swapped)
    torch.testing.assert_close(back, renders["x"])
    assert torch.equal(views_back, views)


def _blobs(n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """16x16 maps whose view is where a square sits (top, bottom, left, right: mirror-
    consistent) and whose framing is the square's size."""
    views = torch.randint(4, (n,), generator=generator)
    framings = torch.randint(3, (n,), generator=generator)
    maps = -torch.ones(n, 3, 16, 16)
    centres = {0: (4, 8), 1: (12, 8), 2: (8, 4), 3: (8, 12)}
    for i in range(n):
        r, c = centres[int(views[i])]
        h = int(framings[i]) + 1
        maps[i, :, r - h:r + h, c - h:c + h] = torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1)
    return maps, views, framings


def test_probe_learns_views_and_framings_and_scores_them() -> None:
    generator = torch.Generator().manual_seed(0)
    maps, views, framings = _blobs(256, generator)
    probe = train_view_probe(maps, views, framings, steps=80, batch_size=32, lr=5e-3)
    assert isinstance(probe, ViewProbe) and not probe.training
    test = _blobs(128, generator)
    accuracy = probe_accuracy(probe, *test, batch_size=50)
    assert accuracy["view"] > 0.9 and accuracy["framing"] > 0.9
    # Wrong labels score what they should: every view label rotated -> (almost) no hits.
    wrong = probe_accuracy(probe, test[0], (test[1] + 1) % 4, test[2])
    assert wrong["view"] < 0.1


def test_probe_trains_inside_no_grad_as_the_quality_benchmark_calls_it() -> None:
    maps, views, framings = _blobs(16, torch.Generator().manual_seed(0))
    untrained = train_view_probe(maps, views, framings, steps=1, lr=0.0)
    with torch.no_grad():
        probe = train_view_probe(maps, views, framings, steps=3, batch_size=8, lr=1e-2)
    moved = [not torch.equal(a, b) for a, b in zip(probe.parameters(), untrained.parameters())]
    assert any(moved)


def test_probe_refuses_bad_sizes() -> None:
    with pytest.raises(ValueError, match="divisible by 8"):
        ViewProbe(20)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        train_view_probe(torch.zeros(2, 3, 16, 16), torch.zeros(2, dtype=torch.long),
                         torch.zeros(2, dtype=torch.long), steps=0)
