"""Per-row affine maps whose coefficients are functions of the rows' first two moments.

No paper: the engine of Batch-Channel Normalization here (Qiao et al. 2019, arXiv:1903.10520).
A norm that is a per-(b, c) affine map y = A x + B of (B, C, L) maps, with (A, B) a function of
the per-(b, c) means m1 = mean x and mean squares m2 = mean x^2 (and of parameters), needs one
fused pass for the moments and one for the output, whatever chain of batch, group and affine
statistics (A, B) encodes. The backward is as short: with S_A = sum dy x and S_B = sum dy per
row (one fused pass), autograd of the small (B, C) coefficient graph gives dL/dm1 and dL/dm2,
and dL/dx = A dy + dL/dm1 / L + 2 x dL/dm2 / L (two passes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from norms.reductions import row_sums

__all__ = ["moment_affine"]

Coefficients = Callable[..., tuple[torch.Tensor, ...]]


class _MomentAffine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, flat, coefficients, *params):
        b, c, n = flat.shape
        sum_sq, sum_x = row_sums(flat, flat, b * c)
        with torch.enable_grad():  # a small side graph of (B, C) tensors for the backward
            moments = [(sum_x / n).view(b, c), (sum_sq / n).view(b, c)]
            inputs = [m.requires_grad_() for m in moments] + [
                None if p is None else p.detach().requires_grad_(p.requires_grad) for p in params
            ]
            scale, shift, *extras = coefficients(*inputs)
        y = torch.addcmul(shift.detach().unsqueeze(2), flat, scale.detach().unsqueeze(2))
        ctx.save_for_backward(flat)
        ctx.graph = (inputs, scale, shift)
        extras = [e.detach() for e in extras]
        ctx.mark_non_differentiable(*extras)
        return (y, *extras)

    @staticmethod
    def backward(ctx, dy, *_extras):
        (flat,) = ctx.saved_tensors
        inputs, scale, shift = ctx.graph
        b, c, n = flat.shape
        dy = dy.contiguous()
        sum_dyx, sum_dy = row_sums(dy, flat, b * c)
        wanted = [t for t in inputs if t is not None and t.requires_grad]
        # retain_graph: the outer graph may be run backward again (it is small, (B, C) tensors).
        found = torch.autograd.grad(
            (scale, shift),
            wanted,
            (sum_dyx.view(b, c), sum_dy.view(b, c)),
            retain_graph=True,
            allow_unused=True,
        )
        by_input = dict(zip(map(id, wanted), found, strict=True))
        grads = [None if t is None else by_input.get(id(t)) for t in inputs]
        d_m1, d_m2 = (torch.zeros_like(m) if g is None else g for m, g in zip(inputs, grads[:2]))
        grad_x = torch.addcmul((d_m1 / n).unsqueeze(2), dy, scale.detach().unsqueeze(2))
        grad_x.addcmul_(flat, (2.0 * d_m2 / n).unsqueeze(2))
        return grad_x, None, *grads[2:]


def moment_affine(
    flat: torch.Tensor, coefficients: Coefficients, *params: torch.Tensor | None
) -> tuple[torch.Tensor, ...]:
    """y = A x + B on contiguous (B, C, L) ``flat``, and the extra outputs of ``coefficients``.

    ``coefficients(m1, m2, *params)`` maps the (B, C) row means and mean squares to
    ``(A, B, *extras)``: A and B (B, C); extras (e.g. batch statistics for running averages)
    are returned without gradient. It must be differentiable in m1, m2 and the params.
    """
    return _MomentAffine.apply(flat, coefficients, *params)
