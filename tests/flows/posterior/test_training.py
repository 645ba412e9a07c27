"""The posterior flows' optimizer and training loop: AdamW's update, best-weights restore."""

from __future__ import annotations

import pytest
import torch

from flows.posterior.optim import Adam, cosine_lr
from flows.posterior.training import train_by_likelihood


@pytest.mark.float64
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_matches_torch_adamw_step_by_step(weight_decay: float) -> None:
    torch.manual_seed(0)
    ours = torch.nn.Linear(3, 2)
    theirs = torch.nn.Linear(3, 2)
    theirs.load_state_dict(ours.state_dict())
    opt_ours = Adam(ours.parameters(), lr=0.05, weight_decay=weight_decay)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=0.05, weight_decay=weight_decay)
    x = torch.randn(16, 3)
    for step in range(6):
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            ((model(x) - 1.0) ** 2).mean().backward()
            opt.step()
        opt_ours.lr = cosine_lr(0.05, step + 1, 6)
        for group in opt_theirs.param_groups:
            group["lr"] = opt_ours.lr
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)
    assert cosine_lr(1.0, 0, 10) == 1.0 and cosine_lr(1.0, 10, 10) == pytest.approx(0.0)


def test_training_restores_the_best_held_out_weights() -> None:
    """A loop that only makes the held-out NLL worse returns the untouched model."""
    torch.manual_seed(0)
    shift = torch.nn.Parameter(torch.zeros(1))
    model = torch.nn.Module()
    model.shift = shift

    def nll(y: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        return 0.5 * ((y - model.shift) ** 2).sum(-1)

    train = torch.randn(256, 1) + 3.0  # training rows pull the shift to 3 ...
    held_out = torch.randn(256, 1)
    held_out -= held_out.mean()  # ... which the held-out rows (mean exactly 0) punish
    history = train_by_likelihood(model, nll, train, held_out, epochs=20, patience=3, lr=0.1)
    assert history.best_epoch == 0 and history.stopped_early and history.epochs == 3
    assert model.shift.item() == 0.0
    history = train_by_likelihood(model, nll, train, train, epochs=5, patience=3, lr=0.1)
    assert history.best_epoch > 0 and len(history.held_out) == history.epochs == 5
