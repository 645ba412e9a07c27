"""Quality measures of generated normal maps: the user's decoded maps and a view/framing probe.

References:
    Huang, Huang, Chen, Xu, Guo. HumanNorm: Learning Normal Diffusion Model for High-quality and
        Realistic 3D Human Generation. CVPR 2024, arXiv:2310.01406 (view and body-part prompts
        the probe checks).

- :func:`clean_normal_maps`: raw samples in [-1, 1] -> what a user gets (decoded with the
  foreground mask, renormalised, background -1), the form rendered maps have.
- :class:`ViewProbe` / :func:`train_view_probe` / :func:`probe_accuracy`: a small CNN trained
  on rendered maps to tell the view bucket (front, back, left, right) and the framing (full
  body, upper body, only head); its accuracy on held-out renders is the ceiling a generator's
  samples are compared with.

The per-pixel measures (``normal_quality``, ``shading_correlation``) live in
``diffusion.normal_maps``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .normal_maps import decode_normals, flip_normals, foreground_mask
from .render import FRAMINGS, VIEWS

__all__ = ["ViewProbe", "clean_normal_maps", "probe_accuracy", "train_view_probe"]


def clean_normal_maps(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples ``(B, 3, H, W)`` in [-1, 1] -> (unit normals on the mask, -1 elsewhere; mask)."""
    normals, mask, _ = decode_normals(((x + 1.0) / 2.0).clamp(0.0, 1.0))
    return torch.where(mask.unsqueeze(1), normals, -torch.ones_like(normals)), mask


def _block(cin: int, cout: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False),
                   nn.BatchNorm2d(cout), nn.SiLU()]
    return nn.Sequential(*layers, nn.MaxPool2d(2))


class ViewProbe(nn.Module):
    """CNN on clean maps ``(B, 3, R, R)`` (R divisible by 8) -> view and framing logits.

    Three conv blocks halve the side each; the last feature map is flattened (not pooled), so
    where a feature sits (a nose left or right of the head, toes up or down) still counts.
    """

    def __init__(self, resolution: int = 32, width: int = 16, convs: int = 1) -> None:
        super().__init__()
        if resolution % 8:
            raise ValueError(f"resolution must be divisible by 8, got {resolution}")
        self.features = nn.Sequential(
            _block(3, width, convs), _block(width, 2 * width, convs),
            _block(2 * width, 4 * width, convs),
        )
        side = resolution // 8
        outputs = len(VIEWS) + len(FRAMINGS)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * width * side * side, outputs),
        )

    def forward(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.features(maps))
        return logits[:, : len(VIEWS)], logits[:, len(VIEWS):]


def _mirror(maps: torch.Tensor, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror image with the left/right view labels swapped (background stays -1)."""
    mask = foreground_mask((maps + 1.0) / 2.0).unsqueeze(1)
    flipped = torch.where(mask.flip(-1), flip_normals(maps), -torch.ones_like(maps))
    swap = torch.tensor([0, 1, 3, 2], device=views.device)
    return flipped, swap[views]


@torch.enable_grad()
def train_view_probe(
    maps: torch.Tensor, views: torch.Tensor, framings: torch.Tensor, steps: int = 600,
    batch_size: int = 64, lr: float = 2e-3, seed: int = 0, width: int = 16, convs: int = 1,
) -> ViewProbe:
    """Fit a :class:`ViewProbe` on clean rendered maps (random mirroring; cosine-decayed Adam).

    ``maps`` ``(N, 3, R, R)`` in [-1, 1] with background -1; ``views`` / ``framings`` ``(N,)``.
    Returns the probe in eval mode. Trains even when called under ``torch.no_grad()`` (the
    quality benchmark measures inside one).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probe = ViewProbe(maps.shape[-1], width, convs)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    probe.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
        idx = torch.randint(len(maps), (batch_size,), generator=generator)
        x, v, f = maps[idx], views[idx], framings[idx]
        flip = torch.rand(batch_size, generator=generator) < 0.5
        x_m, v_m = _mirror(x, v)
        x = torch.where(flip[:, None, None, None], x_m, x)
        v = torch.where(flip, v_m, v)
        view_logits, framing_logits = probe(x)
        loss = F.cross_entropy(view_logits, v) + F.cross_entropy(framing_logits, f)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe.eval()


@torch.no_grad()
def probe_accuracy(
    probe: ViewProbe, maps: torch.Tensor, views: torch.Tensor, framings: torch.Tensor,
    batch_size: int = 256,
) -> dict[str, float]:
    """Fractions of ``maps`` whose view / framing the probe names correctly."""
    probe.eval()
    view_hits = framing_hits = 0
    for start in range(0, len(maps), batch_size):
        view_logits, framing_logits = probe(maps[start:start + batch_size])
        view_hits += int((view_logits.argmax(1) == views[start:start + batch_size]).sum())
        framing_hits += int((framing_logits.argmax(1) == framings[start:start + batch_size]).sum())
    return {"view": view_hits / len(maps), "framing": framing_hits / len(maps)}
