"""Optimizers side by side on one small causal transformer: loss at equal steps, time per step.

The task: scikit-learn's 8x8 digits read as 64-token sequences of pixel intensities
(vocabulary 17), modelled autoregressively by a pre-LN causal transformer
(``norms.transformer.TransformerStack``) with token and position embeddings and a linear head.
Every optimizer trains the same initial weights on the same batches for the same number of
steps; for each optimizer a small learning-rate grid is run and the best final held-out loss is
reported (so no optimizer is judged at a learning rate tuned for another). Time per step is
measured in the same process, interleaved, relative to AdamW.

    python benchmarks/optimizers.py                      # full table (a few minutes on CPU)
    python benchmarks/optimizers.py --steps 50 --quick   # a quick look

References: Jordan et al. (Muon, 2024); Li et al., arXiv:2510.05491 (NorMuon); Wang et al.,
arXiv:2509.24218 (Conda); Heo et al., arXiv:2006.08217 (AdamP); Loshchilov & Hutter,
arXiv:1711.05101 (AdamW).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace

import torch
from torch import nn
from tqdm.auto import tqdm

from norms.transformer import TransformerStack
from trainers.config import OptimizerConfig
from trainers.optim import build_optimizer

VOCAB = 17

# Learning-rate grids: (lr, adamw_lr) for the hybrids (matrices use lr, the rest adamw_lr).
GRIDS = {
    "adamw": [(3e-3, None), (1e-2, None), (3e-2, None)],
    "muon": [(0.02, 1e-2), (0.05, 1e-2), (0.1, 1e-2)],
    "normuon": [(0.02, 1e-2), (0.05, 1e-2), (0.1, 1e-2)],
    "conda": [(3e-3, 1e-2), (1e-2, 1e-2), (3e-2, 1e-2)],
    "adamp": [(3e-3, None), (1e-2, None), (3e-2, None)],
}


class DigitsLM(nn.Module):
    """Causal transformer over 64 pixel tokens (the first token predicts from a start token)."""

    def __init__(self, width: int = 64, depth: int = 3, num_heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB + 1, width)  # + start token
        self.pos_embed = nn.Parameter(torch.randn(1, 64, width) * 0.02)
        self.stack = TransformerStack(width, depth, num_heads)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        start = torch.full_like(tokens[:, :1], VOCAB)
        inputs = torch.cat([start, tokens[:, :-1]], dim=1)
        h = self.stack(self.embed(inputs) + self.pos_embed, causal=True)
        logits = self.head(h)
        return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens.reshape(-1))


def load_digits_tokens(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = torch.tensor(load_digits().data, dtype=torch.long)  # (1797, 64), values 0..16
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    data = data[order]
    return data[:1500], data[1500:]


def lr_scale(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_one(name: str, lr: float, adamw_lr: float | None, args: argparse.Namespace,
              train: torch.Tensor, held: torch.Tensor) -> dict:
    torch.manual_seed(args.seed)
    model = DigitsLM(args.width, args.depth, args.num_heads)
    config = replace(OptimizerConfig(), name=name, lr=lr, adamw_lr=adamw_lr,
                     weight_decay=args.weight_decay, beta2=0.95)
    optimizer = build_optimizer(model, config)
    base = [g["lr"] for g in optimizer.param_groups]
    batches = torch.Generator().manual_seed(args.seed + 1)
    times, losses = [], []
    for step in range(args.steps):
        for group, lr0 in zip(optimizer.param_groups, base):
            group["lr"] = lr0 * lr_scale(step, args.steps, args.warmup)
        idx = torch.randint(len(train), (args.batch_size,), generator=batches)
        start = time.perf_counter()
        loss = model(train[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        held_loss = model(held).item()
        train_loss = model(train[:300]).item()
    return {"optimizer": name, "lr": lr, "adamw_lr": adamw_lr, "train_loss": train_loss,
            "held_out_loss": held_loss, "last_batch_losses": losses[-10:],
            "step_time": sorted(times[5:])[len(times[5:]) // 2]}


def time_steps(names: list[str], args: argparse.Namespace, train: torch.Tensor) -> dict:
    """Median step time per optimizer, measured interleaved (fair on a shared machine)."""
    models, opts = {}, {}
    for name in names:
        torch.manual_seed(args.seed)
        models[name] = DigitsLM(args.width, args.depth, args.num_heads)
        opts[name] = build_optimizer(models[name], OptimizerConfig(name=name, lr=1e-3,
                                                                   adamw_lr=1e-3))
    times = {name: [] for name in names}
    batch = train[: args.batch_size]
    for rep in range(args.timing_reps):
        for name in names:
            start = time.perf_counter()
            loss = models[name](batch)
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
            if rep >= 3:
                times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing-reps", type=int, default=40)
    parser.add_argument("--optimizers", default="adamw,muon,normuon,conda,adamp")
    parser.add_argument("--quick", action="store_true", help="middle learning rate only")
    parser.add_argument("--json", help="also write every run as JSON lines here")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    names = args.optimizers.split(",")
    train, held = load_digits_tokens(args.seed)
    runs = []
    jobs = [(n, lr, alr) for n in names for lr, alr in (GRIDS[n][1:2] if args.quick
                                                        else GRIDS[n])]
    for name, lr, adamw_lr in tqdm(jobs, desc="runs"):
        runs.append(train_one(name, lr, adamw_lr, args, train, held))
    if args.json:
        with open(args.json, "w") as handle:
            for run in runs:
                handle.write(json.dumps(run) + "\n")
    step_times = time_steps(names, args, train)
    print(f"\n{args.steps} steps, batch {args.batch_size}, width {args.width}, depth {args.depth}; "
          f"best lr of the grid by held-out loss; time/step median, interleaved\n")
    print("| optimizer | lr (matrix / other) | train loss | held-out loss | time/step vs AdamW |")
    print("| --- | --- | --- | --- | --- |")
    for name in names:
        best = min((r for r in runs if r["optimizer"] == name), key=lambda r: r["held_out_loss"])
        lrs = f"{best['lr']:g}" + (f" / {best['adamw_lr']:g}" if best["adamw_lr"] else "")
        ratio = step_times[name] / step_times.get("adamw", step_times[name])
        print(f"| {name} | {lrs} | {best['train_loss']:.4f} | {best['held_out_loss']:.4f} | "
              f"{ratio:.2f}x |")
    print("\nall runs (held-out loss):")
    for run in runs:
        print(f"  {run['optimizer']:8s} lr={run['lr']:<6g} adamw_lr={run['adamw_lr']}: "
              f"{run['held_out_loss']:.4f}")


if __name__ == "__main__":
    main()
