r"""The flow-score-matching denoiser of STARFlow-V: a light network that learns the flow score.

A flow trained on noisy data x = x_clean + sigma eps samples noisy videos. Tweedie's formula
denoises them with the model's own score, x_hat = x + sigma^2 grad_x log p(x) (Efron 2011,
"Tweedie's Formula and Selection Bias"), at the cost of a backward pass through the whole
flow. STARFlow-V (Apple 2025, "STARFlow-V: End-to-End Video Generative Modeling with
Normalizing Flows") instead trains a small network D jointly with the flow to regress the
scaled score of the flow itself,

    target(x) = -sigma grad_x log p_flow(x),     loss = mean (D(x) - target(x))^2,

and denoises with one cheap pass, x_hat = x - sigma D(x). D is non-causal in space and
block-causal in time: a token of frame t attends to every token of frames t - past .. t + future
(9 past and 1 future frame in the reference).

:class:`DenoiserTraining` is D's own training step, driven by the video flow through the
trainer protocol: the flow's ``loss`` hands it (x, target) and it accumulates D's gradient (D's
parameters are frozen for the trainer, so neither the trainer's optimizer nor DDP touches
them); the flow's ``after_optimizer_step`` makes it average the gradient over micro-steps and
ranks (an all-reduce when torch.distributed is initialised) and step D's own AdamW. Its
``state_dict`` / ``load_state_dict`` (the AdamW state) is what the flow's ``auxiliary_state()``
gives the trainer to checkpoint, so a resumed run continues exactly.

Example:
    >>> import torch
    >>> den = FlowScoreDenoiser(token_dim=4, tokens_per_frame=6, width=16, depth=1, num_heads=2)
    >>> den(torch.randn(2, 3, 6, 4)).shape
    torch.Size([2, 3, 6, 4])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from norms.transformer import TransformerStack

__all__ = ["DenoiserTraining", "FlowScoreDenoiser", "frame_window_mask"]


def frame_window_mask(
    frames: int, tokens_per_frame: int, past: int, future: int, device: torch.device | None = None
) -> torch.Tensor:
    """Boolean (F N, F N) mask, True where a token of frame i may see a token of frame j.

    Allowed: i - past <= j <= i + future (block-causal in time, full inside a frame).
    """
    if past < 0 or future < 0:
        raise ValueError(f"past and future frames must be >= 0, got {past} and {future}")
    frame = torch.arange(frames, device=device).repeat_interleave(tokens_per_frame)
    delta = frame[None, :] - frame[:, None]
    return (delta >= -past) & (delta <= future)


class FlowScoreDenoiser(nn.Module):
    """Transformer over video tokens (B, F, N, D) -> (B, F, N, D), the scaled score estimate.

    Arguments:
        token_dim: D. tokens_per_frame: N.
        width, depth, num_heads: the transformer (RoPE over the frame-major token order).
        past_frames, future_frames: the temporal attention window.
        norm, norm_placement: names from :mod:`norms` for the shared transformer.

    The output projection starts at zero, so an untrained denoiser leaves samples unchanged.
    """

    def __init__(
        self,
        token_dim: int,
        tokens_per_frame: int,
        width: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        past_frames: int = 9,
        future_frames: int = 1,
        norm: str = "layernorm",
        norm_placement: str = "pre",
    ) -> None:
        super().__init__()
        self.tokens_per_frame = tokens_per_frame
        self.past_frames, self.future_frames = past_frames, future_frames
        self.embed = nn.Linear(token_dim, width)
        self.pos = nn.Parameter(0.02 * torch.randn(1, 1, tokens_per_frame, width))
        self.transformer = TransformerStack(
            width, depth, num_heads, norm=norm, norm_placement=norm_placement, rope=True
        )
        self.out = nn.Linear(width, token_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, f, n, d = tokens.shape
        if n != self.tokens_per_frame:
            raise ValueError(f"expected {self.tokens_per_frame} tokens per frame, got {n}")
        h = (self.embed(tokens) + self.pos).reshape(b, f * n, -1)
        mask = frame_window_mask(f, n, self.past_frames, self.future_frames, tokens.device)
        h = self.transformer(h, attn_mask=mask, causal=False)
        return self.out(h).reshape(b, f, n, d)


class DenoiserTraining:
    """The denoiser's own optimisation: accumulate, average over micro-steps and ranks, AdamW.

    Arguments:
        denoiser: the :class:`FlowScoreDenoiser` (its parameters stay frozen for the trainer).
        lr: AdamW learning rate (betas (0.9, 0.95), weight decay 1e-4).

    The optimizer is built on the first step or state access, after the trainer has placed the
    model. ``state_dict`` refuses while gradients of unfinished micro-steps are pending: the
    trainer checkpoints after optimizer steps, when there are none.
    """

    def __init__(self, denoiser: FlowScoreDenoiser, lr: float) -> None:
        self.denoiser, self.lr = denoiser, lr
        self._grads: list[torch.Tensor] | None = None
        self._count = 0
        self._optimizer: torch.optim.Optimizer | None = None

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        if self._optimizer is None:
            self._optimizer = torch.optim.AdamW(
                self.denoiser.parameters(), lr=self.lr, betas=(0.9, 0.95), weight_decay=1e-4
            )
        return self._optimizer

    def accumulate(self, tokens: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MSE of the denoiser on (tokens, target) (B, F, N, D); adds its gradient; returns it."""
        names, params = zip(*self.denoiser.named_parameters())
        live = {name: p.detach().requires_grad_(True) for name, p in zip(names, params)}
        with torch.enable_grad():
            pred = torch.func.functional_call(self.denoiser, live, (tokens,))
            mse = (pred - target).pow(2).mean()
            grads = torch.autograd.grad(mse, list(live.values()))
        if self._grads is None:
            self._grads = [g.detach().clone() for g in grads]
        else:
            for acc, g in zip(self._grads, grads):
                acc.add_(g)
        self._count += 1
        return mse.detach()

    def step(self) -> None:
        """One AdamW step on the gradients accumulated since the last step (none: no-op)."""
        if self._grads is None:
            return
        grads = [g / self._count for g in self._grads]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flat = torch.cat([g.flatten() for g in grads])
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            grads = list(flat.split([g.numel() for g in grads]))
        params = list(self.denoiser.parameters())
        for p, g in zip(params, grads):
            p.grad = g.reshape(p.shape).to(p.dtype)
        self.optimizer.step()
        for p in params:
            p.grad = None
        self._grads, self._count = None, 0

    def state_dict(self) -> dict[str, Any]:
        """The AdamW state (moments, step counts, hyper-parameters)."""
        if self._grads is not None:
            raise RuntimeError(
                f"the denoiser holds gradients of {self._count} micro-steps not yet applied; "
                "save its state after the optimizer step"
            )
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; parameter indices that became strings (JSON) are read
        back as integers."""
        state = dict(state)
        state["state"] = {
            int(key) if isinstance(key, str) and key.isdigit() else key: value
            for key, value in state.get("state", {}).items()
        }
        self.optimizer.load_state_dict(state)
