r"""Rational-quadratic spline flows for posterior samples (masked autoregressive, MADE conditioner).

Each transform maps every coordinate through a monotonic rational-quadratic spline with K bins
on [-B, B] and the identity outside (linear tails, so no input ever produces NaN or an
infinite log-Jacobian); the spline's knots and derivatives for coordinate j come from a
masked MLP (MADE) that sees only the coordinates before j in its order, so the density is one
network pass and sampling is d passes. Consecutive transforms reverse the coordinate order
(in the masks, so no permutation is ever materialised). The last layer of
every conditioner starts at zero with the derivative offset chosen so that each transform
starts as the exact identity: with the whitening in front (see ``transforms.py``) an untrained
flow is already the Gaussian fit of the posterior.

References:
    C. Durkan, A. Bekasov, I. Murray, G. Papamakarios, "Neural Spline Flows", NeurIPS 2019,
    arXiv:1906.04032.
    M. Germain, K. Gregor, I. Murray, H. Larochelle, "MADE: Masked Autoencoder for
    Distribution Estimation", ICML 2015, arXiv:1502.03509.
    G. Papamakarios, T. Pavlakou, I. Murray, "Masked Autoregressive Flow for Density
    Estimation", NeurIPS 2017, arXiv:1705.07057.

Example:
    >>> import torch
    >>> from flows.posterior.spline import SplineFlow
    >>> x = torch.randn(500, 3, dtype=torch.float64) * torch.tensor([3000.0, 185.0, 1e-5])
    >>> flow = SplineFlow.from_samples(x, transforms=2, hidden=(16,))
    >>> flow.log_prob(x[:4]).shape
    torch.Size([4])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flows.posterior.base import AutoregressiveSplineTransform, PosteriorFlow
from flows.posterior.rqs import spline_parameter_count
from flows.posterior.transforms import Preprocessing

__all__ = ["MaskedMLP", "SplineFlow"]


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MaskedMLP(nn.Module):
    """MADE: the outputs of coordinate ``order[k]`` depend on coordinates ``order[:k]`` only.

    Arguments:
        features: d. hidden: hidden widths. params_per_feature: outputs per coordinate.
        context_features: size of an optional conditioning vector (enters every hidden unit).
        reverse: visit the coordinates last to first (alternated between transforms, so the
            stack needs no permutation layers).
    """

    def __init__(
        self,
        features: int,
        hidden: Sequence[int],
        params_per_feature: int,
        context_features: int = 0,
        reverse: bool = False,
    ) -> None:
        super().__init__()
        self.features, self.params_per_feature = features, params_per_feature
        order = torch.arange(features)
        order = order.flip(0) if reverse else order
        self.register_buffer("order", order)
        in_degrees = torch.empty(features, dtype=torch.long)
        in_degrees[order] = torch.arange(1, features + 1)
        degrees = [in_degrees]
        layers: list[nn.Module] = []
        for width in hidden:
            # Hidden degree h sees inputs 1..h; cycling 0..d-1 keeps every output reachable.
            out_degrees = torch.arange(width) % max(features, 1)
            layers.append(MaskedLinear(out_degrees[:, None] >= degrees[-1][None, :]))
            degrees.append(out_degrees)
        out_degrees = in_degrees.repeat_interleave(params_per_feature)
        self.hidden = nn.ModuleList(layers)
        self.output = MaskedLinear(out_degrees[:, None] > degrees[-1][None, :])
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        self.context = nn.Linear(context_features, hidden[0]) if context_features else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """(B, d) -> (B, d, params_per_feature)."""
        h = x
        for i, layer in enumerate(self.hidden):
            h = layer(h)
            if i == 0 and self.context is not None and context is not None:
                h = h + self.context(context)
            h = F.silu(h)
        return self.output(h).unflatten(-1, (self.features, self.params_per_feature))


class SplineFlow(PosteriorFlow):
    """Masked autoregressive rational-quadratic spline flow with built-in whitening and logit.

    Arguments:
        preprocess: the fixed :class:`Preprocessing` (use :meth:`from_samples`).
        transforms: number of autoregressive spline transforms.
        hidden: hidden widths of each MADE conditioner.
        bins: spline bins K. bound: spline interval [-B, B] in whitened units.
        context_features: size of a conditioning vector (0: unconditional).
    """

    kind = "spline"

    def __init__(
        self,
        preprocess: Preprocessing,
        transforms: int = 4,
        hidden: Sequence[int] = (64, 64),
        bins: int = 8,
        bound: float = 5.0,
        context_features: int = 0,
    ) -> None:
        config = self.constructor_config(locals())
        features = preprocess.features
        layers = [
            AutoregressiveSplineTransform(
                MaskedMLP(
                    features, hidden, spline_parameter_count(bins), context_features, i % 2 == 1
                ),
                bound=bound,
            )
            for i in range(transforms)
        ]
        super().__init__(preprocess, layers, context_features)
        self.config = config
