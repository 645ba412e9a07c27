r"""Maximum-likelihood training with early stopping on a held-out set: the one loop every
posterior flow (and the benchmark's zuko baseline) trains with.

Each epoch shuffles the training rows, takes Adam steps on the mean negative log-likelihood of
each batch (gradient norm clipped at 10, batches with a non-finite loss skipped and counted),
decays the learning rate on a cosine over ``epochs``, and evaluates the held-out NLL; the
weights of the best held-out epoch are restored at the end (early stopping after ``patience``
epochs without an improvement of ``min_delta``). Epoch 0 is the untrained model, so a model
that only gets worse is returned untouched.

References:
    G. Papamakarios, E. Nalisnick, D. J. Rezende, S. Mohamed, B. Lakshminarayanan,
    "Normalizing Flows for Probabilistic Modeling and Inference", JMLR 2021, arXiv:1912.02762.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from flows.posterior.optim import Adam, cosine_lr

__all__ = ["TrainingHistory", "mean_nll", "train_by_likelihood"]

# nll(rows, context rows or None) -> per-row negative log-likelihood
NLL = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass
class TrainingHistory:
    """Held-out NLL of the restored (best) weights and what the loop did."""

    best_held_out: float
    best_epoch: int
    epochs: int
    stopped_early: bool
    skipped_steps: int
    time_s: float
    train: list[float] = field(default_factory=list)
    held_out: list[float] = field(default_factory=list)


def mean_nll(nll: NLL, y: torch.Tensor, context: torch.Tensor | None, chunk: int = 8192) -> float:
    """Mean NLL over rows, in chunks, without gradients."""
    with torch.no_grad():
        total = 0.0
        for start in range(0, len(y), chunk):
            c = context[start : start + chunk] if context is not None else None
            total += float(nll(y[start : start + chunk], c).sum())
    return total / len(y)


def train_by_likelihood(
    model: nn.Module,
    nll: NLL,
    train: torch.Tensor,
    held_out: torch.Tensor,
    *,
    train_context: torch.Tensor | None = None,
    held_out_context: torch.Tensor | None = None,
    epochs: int = 200,
    patience: int = 10,
    batch_size: int = 512,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    min_delta: float = 1e-4,
    seed: int = 0,
    max_time: float | None = None,
    progress: bool = False,
    desc: str = "train",
) -> TrainingHistory:
    """Train ``model``'s parameters to minimise ``nll``; restore the best held-out weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = Adam(params, lr, weight_decay)
    generator = torch.Generator().manual_seed(seed)
    best = mean_nll(nll, held_out, held_out_context)
    best_state = copy.deepcopy(model.state_dict())
    best_epoch, since_best, skipped, epoch = 0, 0, 0, 0
    history = TrainingHistory(best, 0, 0, False, 0, 0.0)
    start_time = time.perf_counter()
    bar = tqdm(range(1, epochs + 1), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        perm = torch.randperm(len(train), generator=generator)
        running, count = 0.0, 0
        for start in range(0, len(perm), batch_size):
            idx = perm[start : start + batch_size]
            loss = nll(train[idx], train_context[idx] if train_context is not None else None)
            loss = loss.mean()
            if not torch.isfinite(loss):
                skipped += 1
                continue
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            running += float(loss.detach()) * len(idx)
            count += len(idx)
        optimizer.lr = cosine_lr(lr, epoch, epochs)
        model.eval()
        value = mean_nll(nll, held_out, held_out_context)
        history.train.append(running / max(count, 1))
        history.held_out.append(value)
        if value < best - min_delta:
            best, best_epoch, since_best = value, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
        bar.set_postfix(held_out_nll=f"{value:.4f}")
        out_of_time = max_time is not None and time.perf_counter() - start_time > max_time
        if since_best >= patience or out_of_time:
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    history.best_held_out, history.best_epoch, history.epochs = best, best_epoch, epoch
    history.stopped_early, history.skipped_steps = epoch < epochs, skipped
    history.time_s = time.perf_counter() - start_time
    return history
