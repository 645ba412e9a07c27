r"""VideoTransformerFlow: the STARFlow-V global-local video flow with video-aware Jacobi sampling.

References:
    Apple. STARFlow-V: End-to-End Video Generative Modeling with Normalizing Flows, 2025
    (global-local blocks, in-frame flip, causal prefix conditioning, flow-score-matching
    denoiser, video-aware Jacobi from the previous frame, sliding-window extension).
    Gu, Chen, Zhai, et al. STARFlow: Scaling Latent Normalizing Flows for High-resolution Image
    Synthesis. arXiv:2506.06276, 2025 (deep-shallow design, softplus affine, guidance rule).
    Zhai, Zhang, Gu, et al. Normalizing Flows are Capable Generative Models (TARFlow).
    arXiv:2412.06329, 2024.
    Zhang, et al. Accelerate TarFlow Sampling with GS-Jacobi Iteration. arXiv:2505.12849, 2025.

A video (B, T, C, H, W) (pixels in [-1, 1], or per-frame latents of a local diffusers
``AutoencoderKL``) is cut into T frames of N = (H/p)(W/p) patch tokens of D = C p^2 numbers.
In the data -> noise direction:

1. ``local_blocks`` shallow :class:`~flows.autoregressive.AutoregressiveBlock` s see every frame
   as its own sequence ((B T, N, D)): they never mix frames. Odd blocks flip the token order.
2. One deep :class:`GlobalVideoBlock` is causal over the flattened frame-major sequence
   (B, T N, D): frame t sees frames <= t. Its permutation is the in-frame flip (reverse the
   tokens inside each frame, keep frame order) when its index is odd, so causality in time
   survives the alternating directions. Conditioning enters here only, as a causal prefix:
   a class token, the tokens of a short prompt (:mod:`flows.text`), and given frames (which
   are simply the first frames of the sequence).

Sampling reverses the deep block frame by frame with a KV cache of solved frames, either one
token per pass (``"sequential"``) or by video-aware Jacobi (``"jacobi"``): each frame (in
chunks of ``jacobi_chunk`` tokens) iterates x <- mu(x) + sigma(x) z from the previous frame's
solution until mean((x' - x)^2) / mean(x'^2) < ``jacobi_threshold`` or ``jacobi_max_iter``
passes (a chunk of c tokens is exact after c passes, so the loop stops there too). Beyond the
training length the window slides: when the window is full the cache is rebuilt from the last
``context_frames`` frames. A ``jacobi_chunk`` that is a multiple of the frame size solves that
many frames together (fewer, larger passes). The local blocks are then inverted for all frames
at once. ``"auto"`` picks sequential or Jacobi per stage, and for the deep block also the
chunk (one frame or the whole window), from measured pass times, then from the observed wall
times once every candidate has run for the same batch, length and options
(:func:`choose_methods`).

Example:
    >>> import torch
    >>> model = VideoTransformerFlow(frames=2, image_size=4, patch_size=2, width=16,
    ...     num_heads=2, local_blocks=1, local_depth=1, global_depth=1, denoiser_width=16)
    >>> x = torch.randn(1, 2, 1, 4, 4)
    >>> z, logdet = model(x)
    >>> back, info = model.reverse(z, method="jacobi", jacobi_threshold=0.0)
    >>> bool(torch.allclose(back, x, atol=1e-5)), info["iterations_per_frame"]
    (True, [4, 4])

Denoising (``denoise=``): ``"none"``; ``"tweedie"``, x + sigma^2 grad log p(x) with the flow's
own score; ``"learned"``, x - sigma D(x) with the flow-score-matching denoiser of
:mod:`flows.denoiser`. The denoiser trains jointly with the flow through the trainer protocol:
``loss()`` computes the flow's scaled score (autograd, retaining the graph for the trainer's
backward), the denoiser's MSE and its gradient (the denoiser's parameters are frozen for the
trainer, so its optimizer and DDP never touch them); ``after_optimizer_step()`` averages those
gradients over accumulation steps and ranks (all-reduce when torch.distributed is initialised)
and steps the denoiser's own AdamW. Its optimizer state is not checkpointed (a resumed run
restarts the denoiser's Adam moments).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from core.latent import load_local_vae
from flows.autoregressive import (
    GUIDANCE_RULES,
    AutoregressiveBlock,
    Permutation,
    jacobi_change,
)
from flows.denoiser import FlowScoreDenoiser
from flows.image import patchify, samples_for_logging, unpatchify
from flows.text import TextEmbedding, TextTokenizer
from norms.transformer import KVCache

__all__ = ["DENOISERS", "METHODS", "GlobalVideoBlock", "VideoTransformerFlow"]

METHODS = ("sequential", "jacobi", "auto")
DENOISERS = ("none", "tweedie", "learned")
LN_128 = math.log(128.0)  # log-Jacobian per dim of [0, 256) -> [-1, 1)


# ---------------------------------------------------------------------------- deep block
class GlobalVideoBlock(AutoregressiveBlock):
    """The deep block: causal over all frames (any number of them), prefix, start token, RoPE.

    ``forward`` accepts (B, F N, D) for any F (RoPE positions), so the sliding window and the
    log-density of longer clips work; :meth:`reverse_video` is the frame-by-frame inverse.
    """

    def __init__(
        self,
        token_dim: int,
        tokens_per_frame: int,
        frames: int,
        width: int,
        depth: int,
        num_heads: int,
        flip: bool,
        prefix_len: int = 0,
        affine: str = "softplus",
        norm: str = "layernorm",
        norm_placement: str = "pre",
        mlp_ratio: float = 4.0,
    ) -> None:
        n = tokens_per_frame * frames
        permutation = (
            Permutation.reverse_within(n, tokens_per_frame) if flip else Permutation.identity(n)
        )
        super().__init__(
            token_dim,
            n,
            width,
            depth,
            num_heads,
            permutation=permutation,
            prefix_len=prefix_len,
            start_token=True,
            positions="rope",
            affine=affine,
            norm=norm,
            norm_placement=norm_placement,
            mlp_ratio=mlp_ratio,
        )
        self.tokens_per_frame, self.flip = tokens_per_frame, flip

    def _order(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, F, N, D) frames <-> this block's token order (the flip is its own inverse)."""
        return frames.flip(2) if self.flip else frames

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, F N, D) -> (z, logdet (B,)); F may differ from the training length."""
        b, length, d = x.shape
        if length % self.tokens_per_frame or d != self.token_dim:
            raise ValueError(
                f"expected (B, frames * {self.tokens_per_frame}, {self.token_dim}) tokens, "
                f"got {tuple(x.shape)}"
            )
        frames = self._order(x.reshape(b, -1, self.tokens_per_frame, d)).reshape(b, length, d)
        ctx = self._context(cond, b)
        h = torch.cat([ctx, self._embed(frames[:, :-1], 0)], dim=1)
        log_sigma, mu = self._affine(self.transformer(h)[:, ctx.shape[1] - 1 :])
        zp = (frames - mu) * torch.exp(-log_sigma)
        z = self._order(zp.reshape(b, -1, self.tokens_per_frame, d)).reshape(b, length, d)
        return z, -log_sigma.sum(dim=(1, 2))

    @torch.no_grad()
    def reverse_video(
        self,
        z: torch.Tensor,
        cond: torch.Tensor | None = None,
        uncond: torch.Tensor | None = None,
        guidance: float = 0.0,
        guidance_rule: str = "tarflow",
        given: torch.Tensor | None = None,
        method: str = "jacobi",
        threshold: float = 1e-3,
        max_iter: int = 32,
        chunk_size: int | None = None,
        window: int | None = None,
        context_frames: int | None = None,
        init: str = "previous",
        progress: bool = False,
    ) -> tuple[torch.Tensor, list[int]]:
        """Invert new frames z (B, F, N, D) after ``given`` frames (B, G, N, D) of block input.

        Returns (x (B, F, N, D), passes per new frame). ``window`` frames at most sit in the
        cache (default: the training length); when it is full, the cache is rebuilt from the
        last ``context_frames`` frames (default window // 2). ``chunk_size`` tokens are iterated
        together: at most one frame (default: one frame), or a multiple of the frame size to
        solve that many frames at once. ``init="previous"`` starts every frame from the
        previous frame's solution (video-aware Jacobi), ``"noise"`` from its own z.
        """
        if init not in ("previous", "noise"):
            raise ValueError(f"jacobi init {init!r} is unknown; choose previous or noise")
        if method not in ("sequential", "jacobi"):
            raise ValueError(f"method {method!r} is unknown; choose sequential or jacobi")
        b, f, n, d = z.shape
        window = window or self.num_tokens // n
        keep = context_frames if context_frames is not None else max(1, window // 2)
        if not 1 <= keep < window:
            raise ValueError(f"context_frames must lie in [1, {window - 1}], got {keep}")
        chunk = chunk_size or n
        if chunk < 1 or max_iter < 1 or threshold < 0:
            raise ValueError(
                f"jacobi needs chunk >= 1, max_iter >= 1, threshold >= 0; got {chunk}, "
                f"{max_iter}, {threshold}"
            )
        ctx, guided = self._guided_context(cond, uncond, b, guidance_rule)

        def doubled(h: torch.Tensor) -> torch.Tensor:
            return torch.cat([h, h]) if guided else h

        def rebuild(frames: list[torch.Tensor]) -> tuple[KVCache, torch.Tensor]:
            """A cache of the prefix, start token and ``frames``; returns it and the last input."""
            seq = ctx
            if frames:
                tokens = torch.cat(frames, dim=1).reshape(b, -1, d)
                seq = torch.cat([ctx, doubled(self._embed(tokens, 0))], dim=1)
            cache = KVCache()
            if seq.shape[1] > 1:
                self.transformer(seq[:, :-1], cache=cache)
            return cache, seq[:, -1:]

        history = list(self._order(given).unbind(1)) if given is not None else []
        in_window = min(len(history), window - 1)
        cache, last = rebuild(history[len(history) - in_window :])
        zp = self._order(z)
        solved, passes = [], []
        # Jacobi chunks: up to one frame of tokens, or a multiple of N = that many frames.
        if method == "sequential":
            group, step = 1, 1
        elif chunk > n:
            if chunk % n:
                raise ValueError(
                    f"a Jacobi chunk above one frame ({n} tokens) must be whole frames, got {chunk}"
                )
            group, step = chunk // n, chunk
        else:
            group, step = 1, chunk
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=f, desc=f"{method} frames", unit="frame", leave=False)
        t = 0
        while t < f:
            if in_window == window:
                in_window = keep
                cache, last = rebuild(history[len(history) - keep :])
            g = min(group, f - t, window - in_window)
            # Video-aware Jacobi: the previous frame's solution is every new frame's first guess.
            if history and init == "previous":
                x = history[-1].repeat(1, g, 1)
            else:
                x = zp[:, t : t + g].reshape(b, g * n, d).clone()
            target = zp[:, t : t + g].reshape(b, g * n, d)
            used = 0
            for s in range(0, g * n, step):
                e = min(s + step, g * n)
                # A chunk of c tokens is exact after c passes, so never iterate longer.
                budget = min(max_iter, e - s)
                a, base = s, cache.length  # a: first token of the chunk not yet accepted
                for k in range(budget):
                    if a == s:  # the input before token s is the last solved token
                        inputs = torch.cat([last, doubled(self._embed(x[:, s : e - 1], 0))], 1)
                    else:  # token a - 1 is accepted: only the rest of the chunk is recomputed
                        inputs = doubled(self._embed(x[:, a - 1 : e - 1], 0))
                    h = self.transformer(inputs, cache=cache)
                    log_sigma, mu = self._guided_affine(h, guided, guidance, guidance_rule)
                    new = mu + torch.exp(log_sigma) * target[:, a:e]
                    used += 1
                    if k == budget - 1:
                        x[:, a:e] = new
                        break
                    change, n_small = jacobi_change(new, x[:, a:e], threshold)
                    x[:, a:e] = new
                    if change < threshold:
                        break  # the cache keeps this pass: it is the solved prefix
                    # Token a is exact (its inputs are accepted); so are, to the threshold, the
                    # tokens after it that no longer move. Keep their inputs in the cache.
                    accept = min(1 + n_small, e - a)
                    if a + accept == e:
                        break
                    cache.truncate(base + accept)
                    a, base = a + accept, base + accept
                last = doubled(self._embed(x[:, e - 1 : e], 0))
            frames = list(x.reshape(b, g, n, d).unbind(1))
            history += frames
            solved += frames
            # A group's passes are booked on its first frame.
            passes += [used] + [0] * (g - 1)
            in_window += g
            t += g
            if bar is not None:
                bar.update(g)
        if bar is not None:
            bar.close()
        return self._order(torch.stack(solved, dim=1)), passes


# ---------------------------------------------------------------------------- the model
class VideoTransformerFlow(ModelMixin, ConfigMixin):
    r"""STARFlow-V style video flow: shallow per-frame blocks + one deep causal global block.

    Arguments:
        frames: training length T (the sliding window when sampling longer videos).
        image_size: side of the square frames in pixels. in_channels: frame channels.
        patch_size: patch side on the flow's grid (pixels, or latents in latent mode).
        width, num_heads, mlp_ratio: the transformers of every block.
        local_blocks, local_depth: number and depth of the per-frame shallow blocks.
        global_depth: depth of the deep global block.
        norm, norm_placement: a token norm and its placement by name (see :mod:`norms`).
        affine: "softplus" (STARFlow) or "exp" (TARFlow).
        noise_sigma: std of the Gaussian noise added to training data (and removed by the
            denoisers); with ``dequantization="uniform"`` the loss is a true bits/dim bound.
        num_classes: class labels as a prefix token (0 = none).
        text_tokens: prompt length of the learned text embedding (0 = no text).
        condition_dropout: probability of replacing a sample's whole prefix by the null prefix in
            training (classifier-free guidance).
        learned_denoiser: build and train the flow-score-matching denoiser.
        denoiser_width, denoiser_depth, denoiser_past_frames, denoiser_future_frames,
            denoiser_lr: its transformer, temporal window and AdamW learning rate.
        vae: path of a local diffusers AutoencoderKL folder applied per frame (latent mode).
        latent_scale: latent multiplier (default: the autoencoder's ``scaling_factor``).
    """

    @register_to_config
    def __init__(
        self,
        frames: int = 16,
        image_size: int = 32,
        in_channels: int = 1,
        patch_size: int = 4,
        width: int = 128,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        local_blocks: int = 2,
        local_depth: int = 2,
        global_depth: int = 6,
        norm: str = "layernorm",
        norm_placement: str = "pre",
        affine: str = "softplus",
        noise_sigma: float = 0.05,
        dequantization: str = "gaussian",
        num_classes: int = 0,
        text_tokens: int = 0,
        condition_dropout: float = 0.1,
        learned_denoiser: bool = True,
        denoiser_width: int = 64,
        denoiser_depth: int = 2,
        denoiser_past_frames: int = 9,
        denoiser_future_frames: int = 1,
        denoiser_lr: float = 1e-3,
        vae: str | None = None,
        latent_scale: float | None = None,
    ) -> None:
        super().__init__()
        if dequantization not in ("gaussian", "uniform"):
            raise ValueError(f"dequantization {dequantization!r} is unknown; use gaussian/uniform")
        if dequantization == "uniform" and vae is not None:
            raise ValueError("uniform dequantisation needs pixel mode (vae=None)")
        if frames < 2 or local_blocks < 0 or global_depth < 1:
            raise ValueError(
                f"need frames >= 2, local_blocks >= 0, global_depth >= 1; got {frames}, "
                f"{local_blocks}, {global_depth}"
            )
        if not 0.0 <= condition_dropout <= 1.0:
            raise ValueError(f"condition_dropout must lie in [0, 1], got {condition_dropout}")
        object.__setattr__(self, "_vae", load_local_vae(vae) if vae is not None else None)
        grid, channels, self.latent_scale = image_size, in_channels, 1.0
        if self._vae is not None:
            vae_config = self._vae.config
            grid = image_size // 2 ** (len(vae_config.block_out_channels) - 1)
            channels = vae_config.latent_channels
            self.latent_scale = float(latent_scale or vae_config.scaling_factor)
        if grid % patch_size:
            raise ValueError(f"patch_size {patch_size} must divide the flow's grid size {grid}")
        self.grid_size, self.channels = grid, channels
        self.tokens_per_frame = (grid // patch_size) ** 2
        self.token_dim = channels * patch_size**2
        n, d = self.tokens_per_frame, self.token_dim
        self.local = nn.ModuleList(
            AutoregressiveBlock(
                d,
                n,
                width,
                local_depth,
                num_heads,
                permutation="reverse" if i % 2 else "identity",
                start_token=True,
                positions="learned",
                affine=affine,
                norm=norm,
                norm_placement=norm_placement,
                mlp_ratio=mlp_ratio,
            )
            for i in range(local_blocks)
        )
        self.prefix_len = (1 if num_classes else 0) + text_tokens
        self.global_block = GlobalVideoBlock(
            d,
            n,
            frames,
            width,
            global_depth,
            num_heads,
            flip=bool(local_blocks % 2),
            prefix_len=self.prefix_len,
            affine=affine,
            norm=norm,
            norm_placement=norm_placement,
            mlp_ratio=mlp_ratio,
        )
        # Class num_classes is the null label of classifier-free guidance.
        self.class_embed = nn.Embedding(num_classes + 1, width) if num_classes else None
        vocab = TextTokenizer(max(1, text_tokens)).vocab_size
        self.text_embed = TextEmbedding(vocab, text_tokens, width) if text_tokens else None
        self.null_text = (
            nn.Parameter(0.02 * torch.randn(1, text_tokens, width)) if (text_tokens) else None
        )
        self.denoiser = None
        if learned_denoiser:
            self.denoiser = FlowScoreDenoiser(
                d,
                n,
                denoiser_width,
                denoiser_depth,
                max(1, denoiser_width // 32),
                denoiser_past_frames,
                denoiser_future_frames,
                norm=norm,
                norm_placement=norm_placement,
            )
            # Frozen for the trainer (its optimizer and DDP skip it); trained by its own AdamW.
            self.denoiser.requires_grad_(False)
        self._denoiser_state: dict[str, Any] = {"grads": None, "count": 0, "optimizer": None}

    # ------------------------------------------------------------------ shapes, conditioning
    @property
    def tokenizer(self) -> TextTokenizer:
        return TextTokenizer(max(1, self.config.text_tokens))

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one frame in the flow's space (latents in latent mode)."""
        return (self.channels, self.grid_size, self.grid_size)

    def _tokens(self, video: torch.Tensor) -> torch.Tensor:
        """(B, F, C, H, W) -> (B, F, N, D)."""
        if video.dim() != 5 or tuple(video.shape[2:]) != self.frame_shape:
            shape = ", ".join(map(str, self.frame_shape))
            raise ValueError(f"expected a video (B, frames, {shape}), got {tuple(video.shape)}")
        b, f = video.shape[:2]
        tokens = patchify(video.reshape(b * f, *self.frame_shape), self.config.patch_size)
        return tokens.reshape(b, f, self.tokens_per_frame, self.token_dim)

    def _video(self, tokens: torch.Tensor) -> torch.Tensor:
        b, f = tokens.shape[:2]
        frames = unpatchify(
            tokens.reshape(b * f, self.tokens_per_frame, self.token_dim),
            self.channels,
            self.grid_size,
            self.config.patch_size,
        )
        return frames.reshape(b, f, *self.frame_shape)

    def check_condition(self, y: torch.Tensor | None, text: torch.Tensor | None) -> None:
        """Raise ValueError for labels or prompts this model cannot take."""
        n = self.config.num_classes
        if y is not None:
            if not n:
                raise ValueError("this model has no class labels (num_classes=0); give no label")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n):
                raise ValueError(f"class labels must lie in 0..{n - 1}, got {y.unique().tolist()}")
        if text is not None and not self.config.text_tokens:
            raise ValueError("this model takes no text prompt (text_tokens=0)")

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> (B, text_tokens) ids; unknown words or long prompts raise ValueError."""
        if not self.config.text_tokens:
            raise ValueError("this model takes no text prompt (text_tokens=0)")
        return self.tokenizer.encode_batch(list(prompts)).to(self.device)

    def prefix(
        self,
        batch: int,
        y: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """(B, P, width) conditioning prefix of the deep block; missing parts are null tokens.

        ``drop`` (B,) bool replaces whole prefixes by the null prefix (conditioning dropout).
        """
        parts = []
        if self.class_embed is not None:
            null = torch.full((batch,), self.config.num_classes, device=self.device)
            labels = null if y is None else y.to(self.device).long()
            if drop is not None:
                labels = torch.where(drop, null, labels)
            parts.append(self.class_embed(labels)[:, None])
        if self.text_embed is not None:
            null = self.null_text.expand(batch, -1, -1)
            tokens = null if text is None else self.text_embed(text.to(self.device))
            if drop is not None:
                tokens = torch.where(drop[:, None, None], null, tokens)
            parts.append(tokens)
        return torch.cat(parts, dim=1) if parts else None

    # ------------------------------------------------------------------ latents
    @property
    def vae(self) -> Any:
        return self._vae

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Pixels (B, F, C, H, W) in [-1, 1] -> the flow's space (per-frame autoencoder)."""
        if self._vae is None:
            return video
        b, f = video.shape[:2]
        vae = self._vae.to(video.device, video.dtype)
        with torch.no_grad():
            latents = vae.encode(video.flatten(0, 1)).latent_dist.mean * self.latent_scale
        return latents.reshape(b, f, *latents.shape[1:])

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """The flow's space -> pixels (B, F, C, H, W) in [-1, 1]."""
        if self._vae is None:
            return x
        b, f = x.shape[:2]
        vae = self._vae.to(x.device, x.dtype)
        with torch.no_grad():
            frames = vae.decode(x.flatten(0, 1) / self.latent_scale).sample
        return frames.reshape(b, f, *frames.shape[1:])

    # ------------------------------------------------------------------ flow
    def local_forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-frame blocks: (B, F, N, D) -> (u, logdet (B,)); frames never mix."""
        b, f, n, d = tokens.shape
        u = tokens.reshape(b * f, n, d)
        logdet = u.new_zeros(b * f)
        for block in self.local:
            u, block_logdet = block(u)
            logdet = logdet + block_logdet
        return u.reshape(b, f, n, d), logdet.reshape(b, f).sum(1)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, F, C, H, W) in the flow's space -> (z like x, total log|det dz/dx| (B,))."""
        self.check_condition(y, text)
        u, logdet = self.local_forward(self._tokens(x))
        b, f, n, d = u.shape
        z, global_logdet = self.global_block(u.reshape(b, f * n, d), self.prefix(b, y, text, drop))
        return self._video(z.reshape(b, f, n, d)), logdet + global_logdet

    def log_prob(
        self, x: torch.Tensor, y: torch.Tensor | None = None, text: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log p(x) per video in nats (standard normal prior)."""
        z, logdet = self(x, y, text)
        flat = z.flatten(1)
        return logdet - 0.5 * (flat.pow(2).sum(1) + flat.shape[1] * math.log(2 * math.pi))

    def _local_reverse(
        self,
        u: torch.Tensor,
        method: str,
        threshold: float,
        max_iter: int,
        chunk: int | None,
    ) -> tuple[torch.Tensor, list[int]]:
        b, f, n, d = u.shape
        x, passes = u.reshape(b * f, n, d), [0] * len(self.local)
        for i in reversed(range(len(self.local))):
            if method == "sequential":
                x, passes[i] = self.local[i].reverse_sequential(x), n
            else:
                x, passes[i] = self.local[i].reverse_jacobi(
                    x, threshold=threshold, max_iter=max_iter, chunk_size=chunk
                )
        return x.reshape(b, f, n, d), passes

    @torch.no_grad()
    def reverse(
        self,
        z: torch.Tensor,
        y: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        given: torch.Tensor | None = None,
        method: str = "auto",
        guidance: float = 0.0,
        guidance_rule: str = "tarflow",
        jacobi_threshold: float = 1e-3,
        jacobi_max_iter: int = 32,
        jacobi_chunk: int | None = None,
        jacobi_init: str = "previous",
        context_frames: int | None = None,
        progress: bool = False,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Invert new frames z (B, F, C, H, W) that follow ``given`` frames (B, G, C, H, W).

        ``given`` lives in the flow's space (noisy data); it is the causal prefix of the deep
        block. F may exceed the training length (sliding window). ``jacobi_chunk`` (tokens,
        default one frame; a multiple of the frame size solves that many frames together),
        ``jacobi_init`` ("previous" frame or "noise") and ``context_frames``: see
        :meth:`GlobalVideoBlock.reverse_video`. Returns (x (B, F, C, H, W), info) with info
        {"method": {"global", "local"}, "iterations_per_frame", "local_iterations"}.
        """
        if method not in METHODS:
            raise ValueError(f"method {method!r} is unknown; choose one of: {', '.join(METHODS)}")
        if guidance_rule not in GUIDANCE_RULES:
            known = ", ".join(GUIDANCE_RULES)
            raise ValueError(f"guidance rule {guidance_rule!r} is unknown; choose one of: {known}")
        self.check_condition(y, text)
        if guidance and y is None and text is None:
            raise ValueError("guidance needs a conditional model and a class label or prompt")
        tokens = self._tokens(z)
        b, f = tokens.shape[:2]
        u_given = None
        if given is not None:
            if given.shape[0] != b:
                raise ValueError(f"given frames have batch {given.shape[0]}, z has batch {b}")
            u_given, _ = self.local_forward(self._tokens(given))
        cond = self.prefix(b, y, text)
        uncond = self.prefix(b) if guidance else None
        n = self.tokens_per_frame
        methods = {"global": method, "local": method}
        chunks = {"global": jacobi_chunk, "local": None}
        # The chunk is part of the method label, not of the key: every explicit run of a
        # (method, chunk) pair is an observation that "auto" can reuse.
        key = (b, f, str(z.device), self.dtype, bool(guidance), jacobi_threshold, jacobi_init)
        if method == "auto":
            methods, chunks = choose_methods(self, key, jacobi_chunk)
        if chunks["local"] is None and jacobi_chunk is not None:
            chunks["local"] = min(jacobi_chunk, n)
        start = time.perf_counter()
        u, passes = self.global_block.reverse_video(
            tokens,
            cond,
            uncond,
            guidance,
            guidance_rule,
            given=u_given,
            method=methods["global"],
            threshold=jacobi_threshold,
            max_iter=jacobi_max_iter,
            chunk_size=chunks["global"],
            window=self.config.frames,
            context_frames=context_frames,
            init=jacobi_init,
            progress=progress,
        )
        middle = time.perf_counter()
        x, local_passes = self._local_reverse(
            u, methods["local"], jacobi_threshold, jacobi_max_iter, chunks["local"]
        )
        seconds = {"global": middle - start, "local": time.perf_counter() - middle}
        observed = self.__dict__.setdefault("_stage_seconds", {}).setdefault(key, {})
        for stage, used in methods.items():
            label = method_label(used, chunks[stage], n)
            best = observed.setdefault(stage, {}).get(label, math.inf)
            observed[stage][label] = min(best, seconds[stage])
        seen = self.__dict__.setdefault("_jacobi_passes_seen", {})
        if methods["global"] == "jacobi" and passes:
            label = method_label("jacobi", chunks["global"], n)
            seen[("global", label)] = sum(passes) / len(passes)
        if methods["local"] == "jacobi" and local_passes:
            seen[("local", "jacobi")] = sum(local_passes) / len(local_passes)
        info = {
            "method": methods,
            "jacobi_chunk": chunks,
            "iterations_per_frame": passes,
            "local_iterations": local_passes,
        }
        return self._video(x), info

    # ------------------------------------------------------------------ denoising
    def denoise(
        self,
        x: torch.Tensor,
        how: str = "learned",
        y: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoise noisy-space videos (B, F, C, H, W): "none", "tweedie" or "learned".

        Tweedie uses the flow's score over windows of the training length.
        """
        if how not in DENOISERS:
            raise ValueError(f"denoiser {how!r} is unknown; choose one of: {', '.join(DENOISERS)}")
        sigma = self.config.noise_sigma
        if how == "none" or sigma == 0:
            return x
        if how == "learned":
            if self.denoiser is None:
                raise ValueError("this model has no learned denoiser (learned_denoiser=False)")
            with torch.no_grad():
                return x - sigma * self._video(self.denoiser(self._tokens(x)))
        window = self.config.frames
        pieces = []
        for s in range(0, x.shape[1], window):
            piece = x[:, s : s + window]
            score = flow_score(self, piece, y, text)
            pieces.append(piece + sigma**2 * score)
        return torch.cat(pieces, dim=1)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        num: int,
        num_frames: int | None = None,
        y: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        given: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        denoise: str = "learned",
        **reverse_kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Videos (num, G + F, C, H, W) in [-1, 1]: ``given`` pixel frames then F new ones.

        ``given`` (num, G, C, H, W) pixels in [-1, 1] is kept unchanged in the output; the flow
        sees it noised by ``noise_sigma`` like its training data.
        """
        num_frames = self.config.frames if num_frames is None else num_frames
        if num < 1 or num_frames < 1:
            raise ValueError(f"need num >= 1 and num_frames >= 1, got {num} and {num_frames}")
        shape = (num, num_frames, *self.frame_shape)
        z = torch.randn(shape, generator=generator, device=self.device, dtype=self.dtype)
        given_flow = None
        if given is not None:
            given = given.to(self.device, self.dtype)
            given_flow = self.encode(given)
            noise = torch.randn(
                given_flow.shape, generator=generator, device=self.device, dtype=self.dtype
            )
            given_flow = given_flow + self.config.noise_sigma * noise
        start = time.perf_counter()
        x, info = self.reverse(z, y, text, given=given_flow, **reverse_kwargs)
        info["reverse_seconds"] = time.perf_counter() - start
        if denoise == "learned" and self.denoiser is None:
            denoise = "tweedie"
        if given_flow is not None:
            x = torch.cat([given_flow, x], dim=1)
        x = self.denoise(x, denoise, y, text)
        video = self.decode(x).clamp(-1, 1)
        if given is not None:
            video[:, : given.shape[1]] = given
        info["denoise"] = denoise
        return video, info

    @torch.no_grad()
    def sample_for_logging(
        self, num: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Videos (num, T, C, H, W) in [0, 1] for the trainer's periodic sampling hook."""
        return samples_for_logging(self, num, generator)

    # ------------------------------------------------------------------ training
    def _dequantise(self, video: torch.Tensor) -> torch.Tensor:
        x = self.encode(video)
        if self.config.dequantization == "uniform":
            x_int = torch.round((video + 1) * 127.5).clamp(0, 255)
            return 2 * (x_int + torch.rand_like(video)) / 256 - 1
        return x + self.config.noise_sigma * torch.randn_like(x)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Flow NLL per dim in nats ("loss"), bits/dim, and the denoiser's loss when trained.

        ``bits_per_dim`` = (nll + ln 128) / ln 2 in pixel mode (a true bound with uniform
        dequantisation), nll / ln 2 per latent dim in latent mode.
        """
        video = batch["x"].to(self.device, self.dtype)
        b = video.shape[0]
        y = batch.get("y") if self.config.num_classes else None
        text = batch.get("text") if self.config.text_tokens else None
        if self.config.text_tokens and text is None:
            raise ValueError("a text-conditioned model needs 'text' token ids in every batch")
        drop = None
        if self.training and self.prefix_len:
            drop = torch.rand(b, device=self.device) < self.config.condition_dropout
        x = self._dequantise(video)
        train_denoiser = self.denoiser is not None and self.training and torch.is_grad_enabled()
        if train_denoiser:
            x.requires_grad_(True)
        z, logdet = self(x, y, text, drop)
        flat = z.flatten(1)
        log_p = logdet - 0.5 * (flat.pow(2).sum(1) + flat.shape[1] * math.log(2 * math.pi))
        nll = (-log_p / flat.shape[1]).mean()
        offset = 0.0 if self._vae is not None else LN_128
        out = {"loss": nll, "bits_per_dim": (nll.detach() + offset) / math.log(2)}
        if train_denoiser:
            # The flow's score at the noisy input; the graph is kept for the trainer's backward.
            (score,) = torch.autograd.grad(log_p.sum(), x, retain_graph=True)
            target = -self.config.noise_sigma * score.detach()
            out["denoiser_loss"] = self._denoiser_gradients(x.detach(), target)
        return out

    def denoiser_target(
        self, x: torch.Tensor, y: torch.Tensor | None = None, text: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The denoiser's regression target -sigma grad_x log p(x) at noisy videos x."""
        return -self.config.noise_sigma * flow_score(self, x, y, text)

    def _denoiser_gradients(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MSE of the denoiser on (x, target); accumulates its gradient for its own step."""
        names, params = zip(*self.denoiser.named_parameters())
        live = {name: p.detach().requires_grad_(True) for name, p in zip(names, params)}
        with torch.enable_grad():
            pred = torch.func.functional_call(self.denoiser, live, (self._tokens(x),))
            mse = (pred - self._tokens(target)).pow(2).mean()
            grads = torch.autograd.grad(mse, list(live.values()))
        state = self._denoiser_state
        if state["grads"] is None:
            state["grads"] = [g.detach().clone() for g in grads]
        else:
            for acc, g in zip(state["grads"], grads):
                acc.add_(g)
        state["count"] += 1
        return mse.detach()

    def after_optimizer_step(self) -> None:
        """Step the denoiser's own AdamW on its gradients averaged over micro-steps and ranks."""
        state = self._denoiser_state
        if self.denoiser is None or state["grads"] is None:
            return
        import torch.distributed as dist

        grads = [g / state["count"] for g in state["grads"]]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flat = torch.cat([g.flatten() for g in grads])
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            grads = list(flat.split([g.numel() for g in grads]))
        params = list(self.denoiser.parameters())
        if state["optimizer"] is None:
            state["optimizer"] = torch.optim.AdamW(
                params, lr=self.config.denoiser_lr, betas=(0.9, 0.95), weight_decay=1e-4
            )
        for p, g in zip(params, grads):
            p.grad = g.reshape(p.shape).to(p.dtype)
        state["optimizer"].step()
        for p in params:
            p.grad = None
        state["grads"], state["count"] = None, 0


def flow_score(
    model: VideoTransformerFlow,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    text: torch.Tensor | None = None,
) -> torch.Tensor:
    """grad_x log p(x) of the flow (autograd), detached, shape of x."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (score,) = torch.autograd.grad(model.log_prob(x, y, text).sum(), x)
    return score.detach()


# ---------------------------------------------------------------------------- method choice
def _pass_times(
    model: VideoTransformerFlow, batch: int, frames: int, device: torch.device, guided: bool
) -> dict[str, tuple[float, float, float]]:
    """Seconds of (one-token, one-frame, one-window) cached passes for the deep / local blocks."""
    from flows.sampling import timed_pass

    n, dtype = model.tokens_per_frame, next(model.parameters()).dtype
    g = min(frames, model.config.frames)
    stages = {
        "global": ([model.global_block], batch * (2 if guided else 1), n * min(frames, 4), g),
        "local": (list(model.local), batch * frames, n // 2, 1),
    }
    result = {}
    for stage, (blocks, rows, context, group) in stages.items():
        t_token = t_frame = t_window = 0.0
        for block in blocks:
            h = torch.randn(rows, context + n * group, block.width, device=device, dtype=dtype)
            cache = KVCache()
            if context:
                block.transformer(h[:, :context], cache=cache)
            base = cache.length

            def run(k: int, block=block, h=h, cache=cache, base=base) -> None:
                cache.truncate(base)
                block.out(block.transformer(h[:, base : base + k], cache=cache))

            t_token += timed_pass(lambda run=run: run(1), repeats=3)
            t_frame += timed_pass(lambda run=run: run(n), repeats=1)
            if group > 1:
                t_window += timed_pass(lambda run=run, group=group: run(n * group), repeats=1)
        result[stage] = (t_token, t_frame, t_window or t_frame)
    return result


def method_label(method: str, chunk: int | None, tokens_per_frame: int) -> str:
    """Label of a setting: "sequential", "jacobi" (frame chunks) or "jacobi@C" (C tokens)."""
    if method == "sequential" or chunk in (None, tokens_per_frame):
        return method
    return f"jacobi@{chunk}"


def choose_methods(
    model: VideoTransformerFlow, key: tuple, jacobi_chunk: int | None = None
) -> tuple[dict[str, str], dict[str, int | None]]:
    """Pick the method and the Jacobi chunk separately for the deep and the local stage.

    ``key`` = (batch, frames, device, dtype, guided, jacobi_threshold, jacobi_init). The deep
    stage's candidates are sequential, Jacobi in one-frame chunks and Jacobi over the whole
    window (chunk = frames x tokens, several frames solved at once); with an explicit
    ``jacobi_chunk`` only sequential and that chunk. The local stage picks sequential or
    Jacobi. Once every candidate of a stage has run for this key (by "auto" or explicitly), the
    fastest observed one (best wall time) wins; until then each call runs an untried candidate
    (so at most one call per candidate is spent exploring). The first choice is predicted:
    sequential costs N one-token passes per frame (per block), Jacobi K chunk-sized passes per
    chunk; pass times are measured once on the model itself and K is the mean passes of the
    model's previous Jacobi call with that chunk (a quarter of the chunk before any).
    Returns ({stage: method}, {stage: chunk or None}).
    """
    batch, frames, device, dtype, guided = key[:5]
    n = model.tokens_per_frame
    group = min(frames, model.config.frames)
    timings = model.__dict__.setdefault("_auto_timings", {})
    if key[:5] not in timings:
        timings[key[:5]] = _pass_times(model, batch, frames, torch.device(device), guided)
    seen = model.__dict__.get("_jacobi_passes_seen", {})
    observed = model.__dict__.get("_stage_seconds", {}).get(key, {})
    if jacobi_chunk is None:
        global_chunks = [None] + ([n * group] if group > 1 else [])
    else:
        global_chunks = [jacobi_chunk]
    local_chunk = None if jacobi_chunk is None else min(jacobi_chunk, n)
    candidates = {
        "global": [("sequential", None)] + [("jacobi", c) for c in global_chunks],
        "local": [("sequential", None), ("jacobi", local_chunk)],
    }
    methods, chunks = {}, {}
    for stage, options in candidates.items():
        t_token, t_frame, t_window = timings[key[:5]][stage]
        times = observed.get(stage, {})
        labels = [method_label(m, c, n) for m, c in options]
        if all(label in times for label in labels):
            best = min(range(len(options)), key=lambda i: times[labels[i]])
        else:
            costs = []
            for (how, chunk), label in zip(options, labels):
                if how == "sequential":
                    costs.append(n * group * t_token)
                    continue
                size = chunk or n
                passes = seen.get((stage, label), min(size, max(1.0, size / 4)))
                pass_time = t_window if size > n else t_frame * size / n
                costs.append(passes * pass_time * n * group / size)
            # Explore: once some candidate has run, try the untried ones (cheapest predicted
            # first), so a wrong prediction costs one call per candidate, never more.
            untried = [i for i, label in enumerate(labels) if label not in times]
            pool = untried if len(untried) < len(labels) else range(len(options))
            best = min(pool, key=costs.__getitem__)
        methods[stage], chunks[stage] = options[best]
    return methods, chunks
