r"""The video flow's sampler, and ``sample.py``'s entry point for ``video_tarflow`` checkpoints.

References:
    Apple. STARFlow-V: End-to-End Video Generative Modeling with Normalizing Flows, 2025
    (text-, image- and video-to-video sampling: deep block frame by frame with video-aware
    Jacobi, local blocks per frame, then the learned denoiser; sliding-window extension).
    Zhang, et al. Accelerate TarFlow Sampling with GS-Jacobi Iteration. arXiv:2505.12849, 2025.

:class:`VideoFlowSampler` chooses how each stage of a
:class:`~flows.video.model.VideoTransformerFlow` is inverted (the deep block: sequential, or
Jacobi in chunks of up to one frame or of whole frames; the per-frame blocks: sequential or
Jacobi) with the shared :class:`~flows.planner.AutoPlanner`, draws the noise, encodes and noises
given frames, denoises and decodes. ``sample_video_flow(checkpoint, config, options)`` is what
``sample.py`` (and ``python -m flows.video``) calls, with the option names of :data:`DEFAULTS`.

Example:
    >>> import torch
    >>> from flows.video import VideoTransformerFlow
    >>> model = VideoTransformerFlow(frames=2, image_size=4, patch_size=2, width=16,
    ...     num_heads=2, local_blocks=1, local_depth=1, global_depth=1, denoiser_width=16)
    >>> sampler = VideoFlowSampler(model.eval(), method="jacobi")
    >>> video, info = sampler.sample(1, num_frames=3, generator=torch.Generator().manual_seed(0))
    >>> video.shape, info["method"]
    (torch.Size([1, 3, 1, 4, 4]), {'global': 'jacobi', 'local': 'jacobi'})
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core.checkpoint import load_model
from core.checks import require_device
from flows.jacobi import DEFAULT_JACOBI_THRESHOLD
from flows.planner import Setting, Stage
from flows.sampling import METHODS, FlowSampler, jacobi_setting
from flows.video.block import JACOBI_INITS

__all__ = [
    "DEFAULTS",
    "DENOISERS",
    "MODEL_NAME",
    "VideoFlowSampler",
    "load_frames",
    "sample_video_flow",
]

MODEL_NAME = "video_tarflow"
DENOISERS = ("none", "tweedie", "learned")


class VideoFlowSampler(FlowSampler):
    r"""Sampler of :class:`~flows.video.model.VideoTransformerFlow`.

    Arguments (besides :class:`~flows.sampling.FlowSampler`'s, given by name):
        jacobi_chunk: tokens per Jacobi chunk of the deep block: at most one frame (default:
            one frame) or a multiple of the frame size (that many frames solved together); the
            per-frame blocks use ``min(jacobi_chunk, frame)``. "auto" chooses between
            sequential decoding and Jacobi with this chunk. Whole-window chunks are fast but,
            on a trained flow, miss sequential by more than float32 rounding at any threshold
            (their still-token acceptance lets errors through that the flow amplifies; see
            :mod:`flows.jacobi`), so auto tries them only when asked for by ``jacobi_chunk``.
        jacobi_init: "previous" (every frame starts from the previous frame's solution) or
            "noise".
        context_frames: frames kept when the window slides past the training length.
    """

    def __init__(
        self,
        model: Any,
        method: str = "auto",
        jacobi_init: str = "previous",
        context_frames: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, method, **options)
        if jacobi_init not in JACOBI_INITS:
            raise ValueError(f"jacobi init {jacobi_init!r} is unknown; choose previous or noise")
        self.jacobi_init, self.context_frames = jacobi_init, context_frames

    def _stages(self, batch: int, frames: int, guided: bool) -> dict[str, Stage]:
        model, chunk = self.model, self.jacobi_chunk
        n, window = model.tokens_per_frame, min(frames, model.config.frames)
        local = jacobi_setting(None if chunk is None else min(chunk, n), n)
        return {
            "global": Stage(
                "global",
                (model.global_block,),
                rows=batch * (2 if guided else 1),
                tokens=frames * n,
                context=n * window // 2,
                chunk=n,
                candidates=(Setting("sequential"), jacobi_setting(chunk, n)),
            ),
            "local": Stage(
                "local",
                tuple(model.local),
                rows=batch * frames,
                tokens=n,
                context=n // 2,
                chunk=n,
                candidates=(Setting("sequential"), local),
            ),
        }

    @torch.no_grad()
    def reverse(
        self,
        z: torch.Tensor,
        y: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        given: torch.Tensor | None = None,
        guidance: float = 0.0,
        guidance_rule: str = "tarflow",
        progress: bool = False,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Invert new frames z (B, F, C, H, W) after ``given`` frames (flow space).

        Returns (x, info): the model's info plus {"method", "jacobi_chunk"} per stage
        ("global", "local"; chunk None: one frame).
        """
        batch, frames = z.shape[:2]
        stages = self._stages(batch, frames, bool(guidance))
        key = self._key(bool(guidance), self.jacobi_init, self.context_frames)
        settings = {name: self._setting(stage, key) for name, stage in stages.items()}
        x, info = self.model.reverse(
            z,
            y,
            text,
            given,
            global_solver=self._solver(settings["global"], self.jacobi_max_iter),
            local_solver=self._solver(settings["local"], self.jacobi_max_iter),
            guidance=guidance,
            guidance_rule=guidance_rule,
            jacobi_init=self.jacobi_init,
            context_frames=self.context_frames,
            progress=progress,
        )
        spent = {"global": [info["global_stats"]], "local": info["local_stats"]}
        for name, stage in stages.items():
            if stage.blocks:
                seconds = info["seconds"][name]
                self.planner.record(stage, key, settings[name], seconds, spent[name])
        info["method"] = {name: s.method for name, s in settings.items()}
        info["jacobi_chunk"] = {name: s.chunk for name, s in settings.items()}
        return x, info

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
        guidance: float = 0.0,
        guidance_rule: str = "tarflow",
        progress: bool = False,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Videos (num, G + F, C, H, W) in [-1, 1]: ``given`` pixel frames then F new ones.

        ``given`` (num, G, C, H, W) pixels in [-1, 1] is kept unchanged in the output; the flow
        sees it noised by ``noise_sigma`` like its training data. ``denoise``: "none",
        "tweedie" or "learned" (Tweedie when the model has no learned denoiser).
        """
        model = self.model
        num_frames = model.config.frames if num_frames is None else num_frames
        if num < 1 or num_frames < 1:
            raise ValueError(f"need num >= 1 and num_frames >= 1, got {num} and {num_frames}")
        if denoise not in DENOISERS:
            known = ", ".join(DENOISERS)
            raise ValueError(f"denoiser {denoise!r} is unknown; choose one of: {known}")
        device, dtype = self._device_dtype
        shape = (num, num_frames, *model.frame_shape)
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        given_flow = None
        if given is not None:
            given = given.to(device, dtype)
            given_flow = model.encode(given)
            noise = torch.randn(given_flow.shape, generator=generator, device=device, dtype=dtype)
            given_flow = given_flow + model.config.noise_sigma * noise
        start = time.perf_counter()
        x, info = self.reverse(z, y, text, given_flow, guidance, guidance_rule, progress)
        info["reverse_seconds"] = time.perf_counter() - start
        if denoise == "learned" and model.denoiser is None:
            denoise = "tweedie"
        if given_flow is not None:
            x = torch.cat([given_flow, x], dim=1)
        x = model.denoise(x, denoise, y, text)
        video = model.decode(x).clamp(-1, 1)
        if given is not None:
            video[:, : given.shape[1]] = given
        info["denoise"] = denoise
        return video, info


def load_frames(path: str, channels: int, size: int, first_only: bool = False) -> torch.Tensor:
    """An image or video file -> (G, C, size, size) frames in [-1, 1]."""
    from core.images import read_image
    from flows.video.io import match_channels, read_video

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"file {path!r} does not exist")
    frames = read_image(file)[None] if first_only else read_video(file)
    frames = match_channels(frames, channels)
    if frames.shape[-2:] != (size, size):
        frames = F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True)
    return frames.clamp(0, 1) * 2 - 1


def _check(options: dict[str, Any]) -> None:
    if options["method"] not in METHODS:
        raise ValueError(
            f"--method {options['method']!r} is unknown; choose one of: {', '.join(METHODS)}"
        )
    if options["denoise"] not in DENOISERS:
        raise ValueError(
            f"--denoise {options['denoise']!r} is unknown; choose one of: {', '.join(DENOISERS)}"
        )
    if options["num"] < 1:
        raise ValueError(f"--num must be >= 1, got {options['num']}")
    if options["frames"] is not None and options["frames"] < 1:
        raise ValueError(f"--frames must be >= 1, got {options['frames']}")
    if options["first_frame"] and options["video"]:
        raise ValueError("give either --first-frame or --video, not both")
    out = options["out"]
    if Path(out).suffix.lower() not in (".mp4", ".gif", ".png"):
        raise ValueError(f"--out {out!r} must end in .mp4, .gif or .png")
    from flows.video.io import require_pyav

    for path in (out, options["video"]):
        if path:
            require_pyav(path)  # before minutes of sampling, not after
    if options["scale"] < 1 or options["fps"] < 1:
        raise ValueError(
            f"--scale and --fps must be >= 1, got {options['scale']} and {options['fps']}"
        )
    require_device(options["device"])


DEFAULTS: dict[str, Any] = {
    "prompt": None,
    "class_label": None,
    "frames": None,
    "num": 1,
    "method": "auto",
    "guidance": 0.0,
    "guidance_rule": "tarflow",
    "first_frame": None,
    "video": None,
    "context_frames": None,
    "denoise": "learned",
    "jacobi_threshold": DEFAULT_JACOBI_THRESHOLD,
    "jacobi_max_iter": None,
    "jacobi_chunk": None,
    "seed": 0,
    "out": "video.mp4",
    "fps": 8,
    "scale": 4,
    "device": "cpu",
    "use_ema": True,
    "progress": True,
}


def sample_video_flow(checkpoint: Path, config: dict[str, Any], options: dict[str, Any]) -> dict:
    """sample.py entry point for ``video_tarflow`` checkpoints: write the video, return a summary.

    ``config`` is the checkpoint's config.yaml as a dict; ``options`` may hold any key of
    :data:`DEFAULTS` (missing keys take the defaults).
    """
    options = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    _check(options)
    name = config.get("model", {}).get("name")
    if name != MODEL_NAME:
        raise ValueError(
            f"checkpoint {str(checkpoint)!r} holds a {name!r} model, not {MODEL_NAME!r}"
        )
    model = load_model(checkpoint, options["use_ema"], kind=MODEL_NAME)[0].to(options["device"])
    sampler = VideoFlowSampler(
        model,
        method=options["method"],
        jacobi_threshold=options["jacobi_threshold"],
        jacobi_max_iter=options["jacobi_max_iter"],
        jacobi_chunk=options["jacobi_chunk"],
        context_frames=options["context_frames"],
    )
    cfg = model.config
    num = options["num"]
    y = text = given = None
    if options["class_label"] is not None:
        y = torch.full((num,), options["class_label"], dtype=torch.long, device=model.device)
    if options["prompt"] is not None:
        text = model.encode_prompts([options["prompt"]] * num)
    model.check_condition(y, text)
    source = options["first_frame"] or options["video"]
    if source:
        frames = load_frames(
            source, cfg.in_channels, cfg.image_size, first_only=bool(options["first_frame"])
        )
        given = frames[None].expand(num, -1, -1, -1, -1).to(model.device)
    n_given = 0 if given is None else given.shape[1]
    total = options["frames"] if options["frames"] is not None else max(cfg.frames, n_given + 1)
    if total <= n_given:
        raise ValueError(
            f"--frames {total} must exceed the {n_given} given frames (it counts them too)"
        )
    generator = torch.Generator(model.device).manual_seed(options["seed"])
    start = time.perf_counter()
    video, info = sampler.sample(
        num,
        total - n_given,
        y=y,
        text=text,
        given=given,
        generator=generator,
        denoise=options["denoise"],
        guidance=options["guidance"],
        guidance_rule=options["guidance_rule"],
        progress=options["progress"],
    )
    wall = time.perf_counter() - start
    from flows.video.io import write_filmstrip, write_video

    videos, out = (video + 1) / 2, Path(options["out"])
    if out.suffix.lower() == ".png":
        write_filmstrip(out, videos, scale=options["scale"])
    else:  # several videos side by side in one clip
        write_video(
            out, torch.cat(list(videos), dim=-1), fps=options["fps"], scale=options["scale"]
        )
    return {
        "model": MODEL_NAME,
        "checkpoint": str(checkpoint),
        "method": info["method"],
        "jacobi_chunk": info["jacobi_chunk"],
        "frames": total,
        "given_frames": n_given,
        "iterations_per_frame": info["iterations_per_frame"],
        "local_iterations": info["local_iterations"],
        "denoise": info["denoise"],
        "reverse_seconds": round(info["reverse_seconds"], 4),
        "wall_time_s": round(wall, 4),
        "num": num,
        "sample_shape": list(video.shape[1:]),
        "out": str(out),
    }
