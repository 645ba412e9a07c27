r"""VideoTransformerFlow: the STARFlow-V global-local video flow.

References:
    Apple. STARFlow-V: End-to-End Video Generative Modeling with Normalizing Flows, 2025
    (global-local blocks, in-frame flip, causal prefix conditioning, flow-score-matching
    denoiser, video-aware Jacobi from the previous frame, sliding-window extension).
    Gu, Chen, Zhai, et al. STARFlow: Scaling Latent Normalizing Flows for High-resolution Image
    Synthesis. arXiv:2506.06276, 2025 (deep-shallow design, softplus affine, guidance rule).
    Zhai, Zhang, Gu, et al. Normalizing Flows are Capable Generative Models (TARFlow).
    arXiv:2412.06329, 2024.

A video (B, T, C, H, W) (pixels in [-1, 1], or per-frame latents of a local diffusers
``AutoencoderKL``) is cut into T frames of N = (H/p)(W/p) patch tokens of D = C p^2 numbers.
In the data -> noise direction:

1. ``local_blocks`` shallow :class:`~flows.autoregressive.AutoregressiveBlock` s see every frame
   as its own sequence ((B T, N, D)): they never mix frames. Odd blocks flip the token order.
2. One deep :class:`~flows.video.block.GlobalVideoBlock` is causal over the flattened
   frame-major sequence (B, T N, D): frame t sees frames <= t. Its permutation is the in-frame
   flip when the number of local blocks is odd, so causality in time survives the alternating
   directions. Conditioning enters here only, as a causal prefix: a class token, the tokens of
   a short prompt (:mod:`flows.video.text`), and given frames (simply the first frames of the
   sequence).

``reverse`` inverts the deep block frame by frame (sliding the window past the training length)
and then the local blocks for all frames at once, each stage solved by the
:class:`~flows.jacobi.JacobiSolver` it is given; choosing them, drawing noise and denoising is
the sampler's job (:class:`flows.video.sampling.VideoFlowSampler`).

Denoising (``denoise(x, how)``): ``"none"``; ``"tweedie"``, x + sigma^2 grad log p(x) with the
flow's own score; ``"learned"``, x - sigma D(x) with the flow-score-matching denoiser of
:mod:`flows.video.denoiser`. The denoiser trains jointly with the flow through the trainer
protocol: ``loss()`` computes the flow's scaled score (autograd, retaining the graph for the
trainer's backward) and hands it to :class:`~flows.video.denoiser.DenoiserTraining`;
``after_optimizer_step()`` steps the denoiser's own AdamW, whose state ``auxiliary_state()``
exposes for the trainer's checkpoints.

Example:
    >>> import torch
    >>> from flows.jacobi import JacobiSolver
    >>> model = VideoTransformerFlow(frames=2, image_size=4, patch_size=2, width=16,
    ...     num_heads=2, local_blocks=1, local_depth=1, global_depth=1, denoiser_width=16)
    >>> x = torch.randn(1, 2, 1, 4, 4)
    >>> z, logdet = model(x)
    >>> back, info = model.reverse(z, global_solver=JacobiSolver(0.0))
    >>> bool(torch.allclose(back, x, atol=1e-5)), info["iterations_per_frame"]
    (True, [4, 4])
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from core.checks import require_positive
from core.latent import load_local_vae
from flows.autoregressive import GUIDANCE_RULES, AutoregressiveBlock
from flows.image import (
    check_levels,
    dequantise,
    nats_to_bits_per_dim,
    normal_log_prob,
    patchify,
    quantise,
    unpatchify,
)
from flows.jacobi import JacobiSolver, JacobiStats
from flows.planner import synchronize
from flows.score import flow_score
from flows.video.block import GlobalVideoBlock
from flows.video.denoiser import DenoiserTraining, FlowScoreDenoiser
from flows.video.sampling import VideoFlowSampler
from flows.video.text import TextEmbedding, TextTokenizer

__all__ = ["DENOISERS", "VideoTransformerFlow"]

DENOISERS = ("none", "tweedie", "learned")


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
        levels: grey levels of the data (pixel mode); sampled frames are rounded to them (null:
            not rounded; 17 for moving scikit-learn digits). Sampling only: training never reads it.
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
        levels: int | None = None,
    ) -> None:
        super().__init__()
        check_levels(levels, vae)
        require_positive("video_tarflow", image_size=image_size, in_channels=in_channels,
                         patch_size=patch_size, width=width, num_heads=num_heads,
                         mlp_ratio=mlp_ratio, local_depth=local_depth,
                         denoiser_width=denoiser_width, denoiser_depth=denoiser_depth)
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
            self._denoiser_training = DenoiserTraining(self.denoiser, denoiser_lr)
        else:
            self._denoiser_training = None

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

    def batch_limits(self) -> dict[str, int]:
        """Training batches' labels and prompt ids, checked by the trainer's collate
        (trainers.protocol) on the CPU, so the loss never reads them."""
        limits = {"y": self.config.num_classes} if self.config.num_classes else {}
        if self.config.text_tokens:
            limits["text"] = self.text_embed.words.num_embeddings
        return limits

    def check_condition(self, y: torch.Tensor | None, text: torch.Tensor | None) -> None:
        """Raise ValueError for labels or prompt ids this model cannot take.

        Reads their values (a device sync), so it runs where they come in (``reverse``, the
        sampler), not in ``forward``: the training loss must not wait for the device every
        step; the trainer's collate checks training batches (:meth:`batch_limits`).
        """
        self._check_condition_kinds(y, text)
        n = self.config.num_classes
        if y is not None and y.numel() and (int(y.min()) < 0 or int(y.max()) >= n):
            raise ValueError(f"class labels must lie in 0..{n - 1}, got {y.unique().tolist()}")
        if text is not None:
            self.text_embed.check_ids(text)

    def _check_condition_kinds(self, y: torch.Tensor | None, text: torch.Tensor | None) -> None:
        """The checks that read no tensor values (free on every forward)."""
        if y is not None and not self.config.num_classes:
            raise ValueError("this model has no class labels (num_classes=0); give no label")
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
        """The flow's space -> pixels (B, F, C, H, W) in [-1, 1] (rounded to ``levels`` if set)."""
        if self._vae is None:
            return quantise(x, self.config.levels)
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
        """x (B, F, C, H, W) in the flow's space -> (z like x, total log|det dz/dx| (B,)).

        Label and id values are not checked here (see :meth:`check_condition`).
        """
        self._check_condition_kinds(y, text)
        u, logdet = self.local_forward(self._tokens(x))
        b, f, n, d = u.shape
        z, global_logdet = self.global_block(u.reshape(b, f * n, d), self.prefix(b, y, text, drop))
        return self._video(z.reshape(b, f, n, d)), logdet + global_logdet

    def log_prob(
        self, x: torch.Tensor, y: torch.Tensor | None = None, text: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log p(x) per video in nats (standard normal prior)."""
        return normal_log_prob(*self(x, y, text))

    @torch.no_grad()
    def reverse(
        self,
        z: torch.Tensor,
        y: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        given: torch.Tensor | None = None,
        global_solver: JacobiSolver | None = None,
        local_solver: JacobiSolver | None = None,
        guidance: float = 0.0,
        guidance_rule: str = "tarflow",
        jacobi_init: str = "previous",
        context_frames: int | None = None,
        progress: bool = False,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Invert new frames z (B, F, C, H, W) that follow ``given`` frames (B, G, C, H, W).

        ``given`` lives in the flow's space (noisy data); it is the causal prefix of the deep
        block. F may exceed the training length (sliding window). ``global_solver`` inverts the
        deep block (chunks of at most one frame, or whole frames; default sequential),
        ``local_solver`` every per-frame block (default sequential); ``jacobi_init`` ("previous"
        frame or "noise") and ``context_frames``: see
        :meth:`~flows.video.block.GlobalVideoBlock.reverse_video`. Returns (x (B, F, C, H, W),
        info) with info {"iterations_per_frame" (deep passes per new frame),
        "local_iterations" (passes per local block), "global_stats", "local_stats"
        (:class:`~flows.jacobi.JacobiStats`), "seconds" {"global", "local"}}.
        """
        if guidance_rule not in GUIDANCE_RULES:
            known = ", ".join(GUIDANCE_RULES)
            raise ValueError(f"guidance rule {guidance_rule!r} is unknown; choose one of: {known}")
        self.check_condition(y, text)
        if guidance and y is None and text is None:
            raise ValueError("guidance needs a conditional model and a class label or prompt")
        tokens = self._tokens(z)
        b, f, n, d = tokens.shape
        u_given = None
        if given is not None:
            if given.shape[0] != b:
                raise ValueError(f"given frames have batch {given.shape[0]}, z has batch {b}")
            u_given, _ = self.local_forward(self._tokens(given))
        cond = self.prefix(b, y, text)
        uncond = self.prefix(b) if guidance else None
        synchronize(z.device)
        start = time.perf_counter()
        u, passes, global_stats = self.global_block.reverse_video(
            tokens,
            cond,
            uncond,
            guidance,
            guidance_rule,
            given=u_given,
            solver=global_solver,
            window=self.config.frames,
            context_frames=context_frames,
            init=jacobi_init,
            progress=progress,
        )
        synchronize(z.device)
        middle = time.perf_counter()
        x = u.reshape(b * f, n, d)
        local_stats = [JacobiStats() for _ in self.local]
        for i in reversed(range(len(self.local))):
            x, local_stats[i] = self.local[i].reverse(x, solver=local_solver)
        synchronize(z.device)
        info = {
            "iterations_per_frame": passes,
            "local_iterations": [s.passes for s in local_stats],
            "global_stats": global_stats,
            "local_stats": local_stats,
            "seconds": {"global": middle - start, "local": time.perf_counter() - middle},
        }
        return self._video(x.reshape(b, f, n, d)), info

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
            score = flow_score(lambda v, piece=piece: self.log_prob(v, y, text), piece)
            pieces.append(piece + sigma**2 * score)
        return torch.cat(pieces, dim=1)

    # ------------------------------------------------------------------ trainer hooks
    def sample_for_logging(
        self, num: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Videos (num, T, C, H, W) in [0, 1] for the trainer's periodic sampling hook."""
        return VideoFlowSampler(self).sample_for_logging(num, generator)

    # ------------------------------------------------------------------ training
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
        c = self.config
        x = dequantise(video, self.encode(video), c.dequantization, c.noise_sigma)
        train_denoiser = self.denoiser is not None and self.training and torch.is_grad_enabled()
        if train_denoiser:
            x.requires_grad_(True)
        log_p = normal_log_prob(*self(x, y, text, drop))
        nll = (-log_p / x[0].numel()).mean()
        out = {"loss": nll, "bits_per_dim": nats_to_bits_per_dim(nll.detach(), self._vae is None)}
        if train_denoiser:
            # The flow's score at the noisy input; the graph is kept for the trainer's backward.
            (score,) = torch.autograd.grad(log_p.sum(), x, retain_graph=True)
            target = -self.config.noise_sigma * score.detach()
            out["denoiser_loss"] = self._denoiser_training.accumulate(
                self._tokens(x.detach()), self._tokens(target)
            )
        return out

    def denoiser_target(
        self, x: torch.Tensor, y: torch.Tensor | None = None, text: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The denoiser's regression target -sigma grad_x log p(x) at noisy videos x."""
        score = flow_score(lambda v: self.log_prob(v, y, text), x)
        return -self.config.noise_sigma * score

    def after_optimizer_step(self) -> None:
        """Step the denoiser's own AdamW on its gradients averaged over micro-steps and ranks."""
        if self._denoiser_training is not None:
            self._denoiser_training.step()

    def auxiliary_state(self) -> DenoiserTraining | None:
        """Training state outside the weights and the trainer's optimizer: the denoiser's AdamW
        (``state_dict`` / ``load_state_dict``), None without a learned denoiser."""
        return self._denoiser_training
