"""Video files in and out: GIF (Pillow), MP4 (PyAV, libx264 yuv420p) and PNG filmstrips.

Videos are tensors ``(T, C, H, W)`` with values in [0, 1] and C = 1 (grey) or 3 (RGB).
Used by the video flows (STARFlow-V, Apple 2025) for datasets of the user's own clips and for
writing samples. PyAV wheels bundle FFmpeg, so this works offline without system libraries.

Example:
    >>> import torch, tempfile, os
    >>> video = torch.rand(4, 3, 8, 8)
    >>> path = os.path.join(tempfile.mkdtemp(), "clip.gif")
    >>> _ = write_video(path, video, fps=4)
    >>> read_video(path).shape
    torch.Size([4, 3, 8, 8])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = [
    "GIF_SUFFIXES",
    "MP4_SUFFIXES",
    "read_video",
    "write_filmstrip",
    "write_video",
]

GIF_SUFFIXES = (".gif",)
MP4_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")


def _to_uint8_frames(video: torch.Tensor, scale: int) -> np.ndarray:
    """(T, C, H, W) in [0, 1] -> (T, H*scale, W*scale, 3) uint8 RGB."""
    if video.ndim != 4 or video.shape[1] not in (1, 3):
        raise ValueError(f"a video must have shape (T, 1|3, H, W), got {tuple(video.shape)}")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    frames = video.detach().float().clamp(0, 1).cpu()
    if frames.shape[1] == 1:
        frames = frames.expand(-1, 3, -1, -1)
    if scale > 1:
        frames = frames.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return (frames.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


def write_video(path: str | Path, video: torch.Tensor, fps: int = 8, scale: int = 1) -> Path:
    """Write (T, C, H, W) in [0, 1] as GIF or MP4 (chosen by suffix); ``scale`` upsamples."""
    path = Path(path)
    suffix = path.suffix.lower()
    if fps < 1:
        raise ValueError(f"fps must be >= 1, got {fps}")
    frames = _to_uint8_frames(video, scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in GIF_SUFFIXES:
        _write_gif(path, frames, fps)
    elif suffix in MP4_SUFFIXES:
        _write_mp4(path, frames, fps)
    else:
        allowed = ", ".join(GIF_SUFFIXES + MP4_SUFFIXES)
        raise ValueError(f"video file {str(path)!r} has an unknown suffix; allowed: {allowed}")
    return path


def _write_gif(path: Path, frames: np.ndarray, fps: int) -> None:
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0
    )


def _write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    import av

    # yuv420p subsamples chroma 2x2, so libx264 needs even sizes: pad by edge replication.
    _, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_video(path: str | Path, channels: int | None = None) -> torch.Tensor:
    """Read a GIF or a video file into (T, C, H, W) float in [0, 1].

    ``channels`` = 1 averages RGB to grey, 3 repeats grey to RGB, None keeps the file's.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix in GIF_SUFFIXES:
        frames = _read_gif(path)
    elif suffix in MP4_SUFFIXES:
        frames = _read_av(path)
    else:
        allowed = ", ".join(GIF_SUFFIXES + MP4_SUFFIXES)
        raise ValueError(f"video file {str(path)!r} has an unknown suffix; allowed: {allowed}")
    if frames.shape[0] == 0:
        raise ValueError(f"video file {str(path)!r} holds no frames")
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    return match_channels(video, channels)


def match_channels(video: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Convert (T, C, H, W) between grey (1) and RGB (3); None leaves it."""
    if channels is None or video.shape[1] == channels:
        return video
    if channels == 1 and video.shape[1] == 3:
        return video.mean(dim=1, keepdim=True)
    if channels == 3 and video.shape[1] == 1:
        return video.expand(-1, 3, -1, -1).clone()
    raise ValueError(f"cannot convert a {video.shape[1]}-channel video to {channels} channels")


def _read_gif(path: Path) -> np.ndarray:
    from PIL import Image, ImageSequence

    try:
        with Image.open(path) as image:
            frames, durations = [], []
            for frame in ImageSequence.Iterator(image):
                frames.append(np.asarray(frame.convert("RGB")))
                durations.append(int(frame.info.get("duration") or 0))
    except OSError as error:
        raise ValueError(f"cannot read GIF {str(path)!r}: {error}") from None
    # GIF writers (Pillow included) merge identical consecutive frames into one longer frame;
    # undo that by repeating each frame by its duration over the shortest one.
    shortest = min((d for d in durations if d > 0), default=0)
    repeats = [max(1, round(d / shortest)) if shortest else 1 for d in durations]
    return np.stack([f for f, r in zip(frames, repeats) for _ in range(r)])


def _read_av(path: Path) -> np.ndarray:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"file {str(path)!r} has no video stream")
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except av.FFmpegError as error:
        raise ValueError(f"cannot read video {str(path)!r}: {error}") from None
    return np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)


def write_filmstrip(path: str | Path, videos: torch.Tensor, scale: int = 1) -> Path:
    """Write (B, T, C, H, W) or (T, C, H, W) videos as one PNG: a row of frames per video."""
    from PIL import Image

    if videos.ndim == 4:
        videos = videos[None]
    if videos.ndim != 5:
        raise ValueError(f"videos must be (B, T, C, H, W) or (T, C, H, W), got {videos.ndim}D")
    rows = [np.concatenate(list(_to_uint8_frames(v, scale)), axis=1) for v in videos]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path
