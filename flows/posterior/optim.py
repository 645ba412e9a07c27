"""Adam with decoupled weight decay (Kingma & Ba 2014; Loshchilov & Hutter 2019) for the small
posterior flows, and their cosine learning-rate schedule.

Written out (a dozen lines) rather than taken from ``torch.optim`` because the first
``torch.optim`` optimizer of a process imports ``torch._dynamo``: 3-7 s on a busy 2-core CPU,
most of a small evidence run. The update is ``torch.optim.AdamW``'s (a test checks it step by
step).

References:
    D. P. Kingma, J. Ba, "Adam: A Method for Stochastic Optimization", arXiv:1412.6980.
    I. Loshchilov, F. Hutter, "Decoupled Weight Decay Regularization", arXiv:1711.05101.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

__all__ = ["Adam", "cosine_lr"]


class Adam:
    """Adam with decoupled weight decay; ``lr`` may be changed between steps."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        self.lr, self.weight_decay, self.betas, self.eps, self.t = lr, weight_decay, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        correction1, correction2 = 1 - b1**self.t, 1 - b2**self.t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            if self.weight_decay:
                p.mul_(1 - self.lr * self.weight_decay)
            denom = (v / correction2).sqrt_().add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / correction1)


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    """Cosine decay from ``base`` at epoch 0 to 0 at ``epochs``."""
    return base * 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
