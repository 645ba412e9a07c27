"""Self-normalizing networks: SELU with LeCun-normal initialisation and AlphaDropout.

Reference:
    Klambauer, Unterthiner, Mayr, Hochreiter. Self-Normalizing Neural Networks. NeurIPS 2017,
    arXiv:1706.02515.

SELU(x) = lambda (x if x > 0 else alpha (e^x - 1)), alpha = 1.6732632423543772,
lambda = 1.0507009873554805. The fixed point (mean 0, variance 1) needs weights drawn from
N(0, 1/fan_in) (LeCun normal), i.e. gain 1. torch's ``calculate_gain('selu')`` is 3/4, tuned
for a different goal; using it here would shrink the variance layer after layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SELU_ALPHA", "SELU_SCALE", "SELUMLP", "init_selu_", "lecun_normal_"]

SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805


@torch.no_grad()
def lecun_normal_(weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``weight`` (out, in, *kernel) with N(0, 1/fan_in), fan_in = in * prod(kernel)."""
    if weight.dim() < 2:
        raise ValueError(
            f"lecun_normal_: need a weight with >= 2 dims; got shape {tuple(weight.shape)}"
        )
    fan_in = weight[0].numel()
    return weight.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)


def init_selu_(module: nn.Module) -> nn.Module:
    """LeCun-normal weights and zero biases for every Linear/Conv in ``module``; returns it."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            lecun_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class SELUMLP(nn.Module):
    """A self-normalizing MLP: (Linear -> SELU -> AlphaDropout) x depth, then a Linear out.

    Arguments:
        in_features: input width.
        hidden_features: width of every hidden layer.
        out_features: output width.
        depth: number of hidden (Linear, SELU) layers.
        dropout: AlphaDropout rate (keeps the self-normalizing mean/variance).

    Example:
        >>> mlp = SELUMLP(16, 64, 4, depth=3)
        >>> mlp(torch.randn(10, 16)).shape
        torch.Size([10, 4])
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int,
        depth: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"SELUMLP: depth must be >= 1; got {depth}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"SELUMLP: dropout must be in [0, 1); got {dropout}")
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden_features), nn.SELU()]
            if dropout > 0:
                layers.append(nn.AlphaDropout(dropout))
            width = hidden_features
        layers.append(nn.Linear(width, out_features))
        self.net = init_selu_(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
