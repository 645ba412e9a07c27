"""The score of a flow, grad_x log p(x), by automatic differentiation.

A normalizing flow gives log p(x) exactly, so its score is one backward pass away. It serves
Tweedie's one-step denoiser x + sigma^2 grad log p(x) (Efron, "Tweedie's Formula and Selection
Bias", JASA 2011) and the regression target -sigma grad log p(x) of the flow-score-matching
denoiser of STARFlow-V (Apple 2025, "STARFlow-V: End-to-End Video Generative Modeling with
Normalizing Flows").

Example:
    >>> import torch
    >>> x = torch.tensor([[1.0, -2.0]])
    >>> flow_score(lambda v: -0.5 * v.pow(2).sum(1), x)  # standard normal: the score is -x
    tensor([[-1.,  2.]])
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["flow_score"]


def flow_score(log_prob: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """grad_x log p(x) (detached, shape of x); ``log_prob`` maps a batch to (B,) log densities."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (score,) = torch.autograd.grad(log_prob(x).sum(), x)
    return score.detach()
