"""Video datasets that need no download, plus a folder of the user's own clips.

- :class:`MovingDigits`: two scikit-learn digits bouncing in a square canvas (the moving-MNIST
  recipe of Srivastava et al. 2015, "Unsupervised Learning of Video Representations using
  LSTMs", arXiv:1502.04681), with a caption such as "a 3 and a 7 moving apart".
- :class:`BouncingShapes`: one coloured circle, square or triangle bouncing on black.
- :class:`TinyClip`: windows of scikit-image's bundled ``no_time_for_that_tiny.gif``.
- :class:`VideoFolder`: clips cut from the MP4/GIF files of a folder (PyAV / Pillow).

Every item is a dict of tensors: ``"x"`` the video (T, C, H, W) in [-1, 1] on 8-bit levels
(``x = x_int / 127.5 - 1``, as the image datasets of :mod:`flows.data`, so a model can recover
the integers for uniform dequantisation) and, for captioned sets, ``"text"`` the caption's
token ids (see :mod:`flows.video.text`) and ``"y"`` a class label. The factories take
``split="train" | "test"`` (disjoint seeds for the generated sets).
Items are deterministic functions of (seed, index). These feed the video flows (STARFlow-V,
Apple 2025); registered for the trainer as ``moving_digits``, ``bouncing_shapes``,
``tiny_clip`` and ``video_folder``.

Example:
    >>> data = MovingDigits(num_videos=4, frames=8, image_size=32)
    >>> item = data[0]
    >>> item["x"].shape, float(item["x"].min()), data.caption(0).startswith("a ")
    (torch.Size([8, 1, 32, 32]), -1.0, True)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from flows.video.io import GIF_SUFFIXES, MP4_SUFFIXES, match_channels, read_video
from flows.video.text import TextTokenizer

__all__ = [
    "BouncingShapes",
    "MovingDigits",
    "TinyClip",
    "VideoFolder",
    "bouncing_shapes",
    "moving_digits",
    "tiny_clip",
    "video_folder",
]


def _quantised(video: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> 8-bit levels in [-1, 1]."""
    return (video.clamp(0, 1) * 255).round() / 127.5 - 1


def _split_seed(seed: int, split: str) -> int:
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r} is unknown; choose train or test")
    return seed if split == "train" else seed + 1_000_003


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _bounce(start: np.ndarray, velocity: np.ndarray, frames: int, limit: float) -> np.ndarray:
    """(frames, 2) positions in [0, limit] reflecting off the walls."""
    positions = np.empty((frames, 2))
    pos, vel = start.astype(float).copy(), velocity.astype(float).copy()
    for t in range(frames):
        positions[t] = pos
        pos = pos + vel
        for k in range(2):
            if pos[k] < 0:
                pos[k], vel[k] = -pos[k], -vel[k]
            elif pos[k] > limit:
                pos[k], vel[k] = 2 * limit - pos[k], -vel[k]
    return positions


class MovingDigits(Dataset):
    """Two scikit-learn digits (8x8, resized to ``digit_size``) bouncing in a square canvas.

    Arguments:
        num_videos: dataset length. frames: frames per video. image_size: canvas side.
        digit_size: side of each digit. speed: pixels per frame (directions are random).
        seed: item i is drawn from ``numpy.random.default_rng([seed, i])``.
        text_tokens: caption length in tokens for ``"text"`` (0 leaves captions out).
    """

    def __init__(
        self,
        num_videos: int = 1000,
        frames: int = 16,
        image_size: int = 32,
        digit_size: int = 12,
        speed: float = 2.0,
        seed: int = 0,
        text_tokens: int = 8,
    ) -> None:
        from sklearn.datasets import load_digits

        _check_positive(num_videos=num_videos, frames=frames, image_size=image_size)
        if not 1 <= digit_size <= image_size:
            raise ValueError(f"digit_size must lie in [1, {image_size}], got {digit_size}")
        self.num_videos, self.frames, self.image_size = num_videos, frames, image_size
        self.digit_size, self.speed, self.seed = digit_size, speed, seed
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
        self.digits = F.interpolate(images, size=(digit_size, digit_size), mode="bilinear")
        self.digits = self.digits.clamp(0, 1)[:, 0]
        self.labels = torch.tensor(digits.target, dtype=torch.long)
        self.tokenizer = TextTokenizer(text_tokens) if text_tokens else None

    def __len__(self) -> int:
        return self.num_videos

    def _draw(self, index: int) -> tuple[torch.Tensor, list[int], bool]:
        if not 0 <= index < self.num_videos:
            raise IndexError(f"index {index} out of range for {self.num_videos} videos")
        rng = np.random.default_rng([self.seed, index])
        which = rng.integers(0, len(self.digits), size=2)
        limit = self.image_size - self.digit_size
        video = torch.zeros(self.frames, 1, self.image_size, self.image_size)
        tracks = []
        for k in which:
            angle = rng.uniform(0, 2 * np.pi)
            velocity = self.speed * np.array([np.cos(angle), np.sin(angle)])
            track = _bounce(rng.uniform(0, limit, size=2), velocity, self.frames, limit)
            tracks.append(track)
            for t, (row, col) in enumerate(np.rint(track).astype(int)):
                window = video[t, 0, row : row + self.digit_size, col : col + self.digit_size]
                torch.maximum(window, self.digits[k], out=window)
        gap = np.linalg.norm(tracks[0] - tracks[1], axis=1)
        return video, [int(self.labels[k]) for k in which], bool(gap[-1] >= gap[0])

    def caption(self, index: int) -> str:
        _, (a, b), apart = self._draw(index)
        return f"a {a} and a {b} moving {'apart' if apart else 'together'}"

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        video, (a, b), apart = self._draw(index)
        item = {"x": _quantised(video), "y": torch.tensor(a)}
        if self.tokenizer is not None:
            words = f"a {a} and a {b} moving {'apart' if apart else 'together'}"
            item["text"] = self.tokenizer.encode(words)
        return item


SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (1.0, 0.2, 0.2),
    "green": (0.2, 1.0, 0.2),
    "blue": (0.3, 0.4, 1.0),
    "yellow": (1.0, 1.0, 0.2),
    "cyan": (0.2, 1.0, 1.0),
    "magenta": (1.0, 0.3, 1.0),
}


class BouncingShapes(Dataset):
    """One coloured shape bouncing on black; caption "a red circle bouncing", label = shape."""

    def __init__(
        self,
        num_videos: int = 1000,
        frames: int = 16,
        image_size: int = 32,
        shape_size: int = 10,
        speed: float = 2.0,
        seed: int = 0,
        text_tokens: int = 8,
    ) -> None:
        _check_positive(num_videos=num_videos, frames=frames, image_size=image_size)
        if not 2 <= shape_size <= image_size:
            raise ValueError(f"shape_size must lie in [2, {image_size}], got {shape_size}")
        self.num_videos, self.frames, self.image_size = num_videos, frames, image_size
        self.shape_size, self.speed, self.seed = shape_size, speed, seed
        self.tokenizer = TextTokenizer(text_tokens) if text_tokens else None
        r = (torch.arange(shape_size) + 0.5) / shape_size * 2 - 1
        yy, xx = torch.meshgrid(r, r, indexing="ij")
        self.masks = torch.stack(
            [(xx**2 + yy**2 <= 1).float(), torch.ones_like(xx), (xx.abs() <= (yy + 1) / 2).float()]
        )

    def __len__(self) -> int:
        return self.num_videos

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.num_videos:
            raise IndexError(f"index {index} out of range for {self.num_videos} videos")
        rng = np.random.default_rng([self.seed, index])
        shape = int(rng.integers(len(SHAPES)))
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        angle = rng.uniform(0, 2 * np.pi)
        limit = self.image_size - self.shape_size
        velocity = self.speed * np.array([np.cos(angle), np.sin(angle)])
        track = _bounce(rng.uniform(0, limit, size=2), velocity, self.frames, limit)
        video = torch.zeros(self.frames, 3, self.image_size, self.image_size)
        patch = self.masks[shape] * torch.tensor(COLOURS[colour])[:, None, None]
        s = self.shape_size
        for t, (row, col) in enumerate(np.rint(track).astype(int)):
            video[t, :, row : row + s, col : col + s] = patch
        item = {"x": _quantised(video), "y": torch.tensor(shape)}
        if self.tokenizer is not None:
            item["text"] = self.tokenizer.encode(f"a {colour} {SHAPES[shape]} bouncing")
        return item


def _resize_video(video: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or video.shape[-2:] == (size, size):
        return video
    return F.interpolate(video, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)


class TinyClip(Dataset):
    """Every window of ``frames`` consecutive frames of scikit-image's tiny GIF (24 frames).

    Frames are resized to ``image_size`` squares; ``flip=True`` doubles the set with mirrors.
    """

    def __init__(self, frames: int = 8, image_size: int = 16, flip: bool = True) -> None:
        import skimage

        path = Path(skimage.__file__).parent / "data" / "no_time_for_that_tiny.gif"
        clip = _resize_video(read_video(path), image_size)
        if not 1 <= frames <= clip.shape[0]:
            raise ValueError(f"frames must lie in [1, {clip.shape[0]}], got {frames}")
        self.clip, self.frames, self.flip = clip, frames, flip
        self.windows = clip.shape[0] - frames + 1

    def __len__(self) -> int:
        return self.windows * (2 if self.flip else 1)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        start = index % self.windows
        video = self.clip[start : start + self.frames]
        return {"x": _quantised(video.flip(-1) if index >= self.windows else video)}


class VideoFolder(Dataset):
    """Clips of ``frames`` frames (every ``stride`` frames) from the videos under ``root``.

    Reads .mp4/.mov/.mkv/.avi/.webm with PyAV and .gif with Pillow, resized to ``image_size``
    squares with ``channels`` channels. Videos shorter than ``frames`` are skipped.
    """

    def __init__(
        self,
        root: str,
        frames: int = 16,
        image_size: int = 32,
        channels: int = 3,
        stride: int | None = None,
    ) -> None:
        _check_positive(frames=frames, image_size=image_size)
        root_path = Path(root)
        if not root_path.is_dir():
            raise FileNotFoundError(f"video folder {root!r} does not exist")
        suffixes = GIF_SUFFIXES + MP4_SUFFIXES
        self.files = sorted(p for p in root_path.rglob("*") if p.suffix.lower() in suffixes)
        if not self.files:
            raise ValueError(f"video folder {root!r} holds no files with suffix {suffixes}")
        self.frames, self.image_size, self.channels = frames, image_size, channels
        self.stride = stride or frames
        self.clips: list[tuple[int, int]] = []
        self._cached: tuple[int, torch.Tensor] | None = None
        for k in range(len(self.files)):
            length = self._video(k).shape[0]
            self.clips += [(k, s) for s in range(0, length - frames + 1, self.stride)]
        if not self.clips:
            raise ValueError(f"no video under {root!r} has at least {frames} frames")

    def _video(self, k: int) -> torch.Tensor:
        if self._cached is None or self._cached[0] != k:
            video = match_channels(read_video(self.files[k]), self.channels)
            self._cached = (k, _resize_video(video, self.image_size))
        return self._cached[1]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        k, start = self.clips[index]
        return {"x": _quantised(self._video(k)[start : start + self.frames])}


# Factories the trainer's dataset registry points at ("flows.video.data:moving_digits", ...).
def moving_digits(split: str = "train", seed: int = 0, **options) -> MovingDigits:
    """The ``moving_digits`` dataset (see :class:`MovingDigits` for the options)."""
    return MovingDigits(seed=_split_seed(seed, split), **options)


def bouncing_shapes(split: str = "train", seed: int = 0, **options) -> BouncingShapes:
    """The ``bouncing_shapes`` dataset (see :class:`BouncingShapes`)."""
    return BouncingShapes(seed=_split_seed(seed, split), **options)


def tiny_clip(split: str = "train", **options) -> TinyClip:
    """The ``tiny_clip`` dataset; the test split has no mirrored copies."""
    _split_seed(0, split)
    return TinyClip(**({"flip": False} if split == "test" else {}) | options)


def video_folder(split: str = "train", **options) -> VideoFolder:
    """The ``video_folder`` dataset (the same clips for every split: the folder is the user's)."""
    _split_seed(0, split)
    return VideoFolder(**options)
