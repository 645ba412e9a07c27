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

Example:
    >>> import torch
    >>> den = FlowScoreDenoiser(token_dim=4, tokens_per_frame=6, width=16, depth=1, num_heads=2)
    >>> den(torch.randn(2, 3, 6, 4)).shape
    torch.Size([2, 3, 6, 4])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from norms.transformer import TransformerStack

__all__ = ["FlowScoreDenoiser", "flow_score_target", "frame_window_mask"]


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


def flow_score_target(
    log_prob: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, sigma: float
) -> torch.Tensor:
    """The denoiser's regression target -sigma grad_x log p(x) (detached, shape of x).

    ``log_prob`` maps a batch to per-sample log densities (B,).
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (score,) = torch.autograd.grad(log_prob(x).sum(), x)
    return (-sigma * score).detach()


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
