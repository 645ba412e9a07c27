r"""A transformer autoregressive flow on parameter tokens (one token per posterior parameter).

The same idea as TARFlow for images (a causal transformer predicts the transform of token j
from tokens < j), applied to the d parameters of a posterior: the token sequence is
``[start, y_1, ..., y_{d-1}]`` (in the transform's coordinate order, reversed every other
transform) (a scalar embedding plus a learned position embedding per
parameter), the project's shared :class:`norms.transformer.TransformerStack` runs causally over
it, and the output at position j gives the rational-quadratic spline parameters of y_j. The
norm and its placement are chosen by name like everywhere else in normkit. The output head
starts at zero, so every transform starts as the identity on the whitened parameters.

References:
    S. Zhai et al., "Normalizing Flows are Capable Generative Models" (TARFlow), 2024,
    arXiv:2412.06329.
    C. Durkan, A. Bekasov, I. Murray, G. Papamakarios, "Neural Spline Flows", NeurIPS 2019,
    arXiv:1906.04032.

Example:
    >>> import torch
    >>> from flows.posterior.autoregressive import ParameterTransformerFlow
    >>> x = torch.randn(300, 4, dtype=torch.float64)
    >>> flow = ParameterTransformerFlow.from_samples(
    ...     x, transforms=1, width=16, depth=1, num_heads=2
    ... )
    >>> flow.sample(5).shape
    torch.Size([5, 4])
"""

from __future__ import annotations

import torch
from torch import nn

from flows.posterior.base import AutoregressiveSplineTransform, PosteriorFlow
from flows.posterior.rqs import rational_quadratic_spline, spline_parameter_count
from flows.posterior.transforms import Preprocessing
from norms.transformer import KVCache, TransformerStack

__all__ = ["ParameterTransformerFlow", "TokenConditioner", "TokenSplineTransform"]


class TokenConditioner(nn.Module):
    """Causal transformer over parameter tokens -> (B, d, P) spline parameters."""

    def __init__(
        self,
        features: int,
        params_per_feature: int,
        width: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        norm: str = "layernorm",
        norm_placement: str = "pre",
        context_features: int = 0,
        reverse: bool = False,
    ) -> None:
        super().__init__()
        self.features, self.params_per_feature = features, params_per_feature
        order = torch.arange(features)
        self.register_buffer("order", order.flip(0) if reverse else order)
        self.register_buffer("position_of", torch.argsort(self.order))
        self.value = nn.Linear(1, width)
        self.start = nn.Parameter(torch.zeros(width))
        self.position = nn.Parameter(torch.randn(features, width) * 0.02)
        self.context = nn.Linear(context_features, width) if context_features else None
        self.stack = TransformerStack(
            width, depth, num_heads, norm=norm, norm_placement=norm_placement
        )
        self.head = nn.Linear(width, params_per_feature)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, y: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        batch = y.shape[0]
        y = y.index_select(-1, self.order)
        values = self.value(y[:, :-1].unsqueeze(-1))
        start = self.start.expand(batch, 1, -1)
        tokens = torch.cat([start, values], dim=1) + self.position
        if self.context is not None and context is not None:
            tokens = tokens + self.context(context).unsqueeze(1)
        params = self.head(self.stack(tokens, causal=True))
        return params.index_select(1, self.position_of)

    def token(
        self, j: int, previous: torch.Tensor | None, batch: int, context: torch.Tensor | None
    ) -> torch.Tensor:
        """The (B, 1, width) input token at position j (``previous`` = y_{j-1}, None for j = 0)."""
        if previous is None:
            token = self.start.expand(batch, 1, -1) + self.position[0]
        else:
            token = self.value(previous.reshape(batch, 1, 1)) + self.position[j]
        if self.context is not None and context is not None:
            token = token + self.context(context).unsqueeze(1)
        return token


class TokenSplineTransform(AutoregressiveSplineTransform):
    """Autoregressive spline transform whose inverse decodes token by token with a KV cache.

    Sampling then costs one transformer step per parameter (d steps of one token) instead of
    d full passes over the sequence.
    """

    def inverse(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        cond: TokenConditioner = self.conditioner
        batch, features = z.shape
        cache = KVCache()
        columns: list[torch.Tensor] = []
        previous = None
        for j, coordinate in enumerate(cond.order.tolist()):
            hidden = cond.stack(cond.token(j, previous, batch, context), cache=cache, causal=True)
            params = cond.head(hidden)[:, 0]
            previous, _ = rational_quadratic_spline(
                z[:, coordinate], params, self.bound, inverse=True
            )
            columns.append(previous)
        return torch.stack(columns, dim=-1).index_select(-1, cond.position_of)


class ParameterTransformerFlow(PosteriorFlow):
    """Transformer autoregressive spline flow over parameter tokens.

    Arguments:
        preprocess: the fixed :class:`Preprocessing` (use :meth:`from_samples`).
        transforms: number of autoregressive transforms (order reversed between them).
        width, depth, num_heads: width, blocks and attention heads of each transformer.
        norm, norm_placement: the norm by name and its placement (see ``norms.transformer``).
        bins, bound: spline bins and interval [-B, B].
        context_features: size of a conditioning vector (0: unconditional).
    """

    kind = "transformer"

    def __init__(
        self,
        preprocess: Preprocessing,
        transforms: int = 4,
        width: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        norm: str = "layernorm",
        norm_placement: str = "pre",
        bins: int = 8,
        bound: float = 5.0,
        context_features: int = 0,
    ) -> None:
        config = self.constructor_config(locals())
        features = preprocess.features
        layers = [
            TokenSplineTransform(
                TokenConditioner(
                    features,
                    spline_parameter_count(bins),
                    width,
                    depth,
                    num_heads,
                    norm,
                    norm_placement,
                    context_features,
                    reverse=i % 2 == 1,
                ),
                bound=bound,
            )
            for i in range(transforms)
        ]
        super().__init__(preprocess, layers, context_features)
        self.config = config
