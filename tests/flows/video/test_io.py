"""Video files (GIF/MP4/filmstrip), the video datasets and the prompt tokenizer."""

from __future__ import annotations

import pytest
import torch

from flows.video.data import (
    BouncingShapes,
    MovingDigits,
    TinyClip,
    VideoFolder,
    moving_digits,
    tiny_clip,
)
from flows.video.io import read_video, write_filmstrip, write_video
from flows.video.text import TextEmbedding, TextTokenizer


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
@pytest.mark.parametrize("channels", [1, 3])
def test_video_written_and_read_back(tmp_path, suffix: str, channels: int) -> None:
    video = torch.zeros(7, channels, 10, 13)  # odd width: MP4 pads to even sizes
    for t in range(7):
        video[t, :, 2:6, t : t + 4] = 1.0  # a moving square
    video[3] = video[2]  # identical neighbours must not merge into one frame
    path = write_video(tmp_path / f"clip{suffix}", video, fps=5)
    back = read_video(path, channels=channels)
    assert back.shape[0] == 7 and back.shape[1] == channels
    assert back.shape[2] >= 10 and back.shape[3] >= 13
    error = (back[:, :, :10, :13] - video).abs().mean()
    assert error < 0.05  # lossy MP4 (crf 10) and the GIF palette stay close
    scaled = read_video(write_video(tmp_path / f"big{suffix}", video, scale=2))
    assert scaled.shape[0] == 7 and scaled.shape[2] >= 20


def test_filmstrip_and_bad_files(tmp_path) -> None:
    from PIL import Image

    path = write_filmstrip(tmp_path / "strip.png", torch.rand(2, 5, 3, 4, 6), scale=2)
    assert Image.open(path).size == (5 * 6 * 2, 2 * 4 * 2)
    with pytest.raises(ValueError, match="unknown suffix"):
        write_video(tmp_path / "clip.avi2", torch.rand(2, 1, 4, 4))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot read"):
        read_video(tmp_path / "broken.mp4")


def test_moving_digits_are_deterministic_and_captioned() -> None:
    data = MovingDigits(num_videos=3, frames=6, image_size=32, digit_size=12, text_tokens=8)
    item = data[1]
    assert item["x"].shape == (6, 1, 32, 32)
    assert item["x"].min() == -1 and item["x"].max() <= 1
    levels = (item["x"] + 1) * 127.5
    torch.testing.assert_close(levels, levels.round())  # 8-bit levels for dequantisation
    assert torch.equal(MovingDigits(num_videos=3, frames=6)[1]["x"], item["x"])
    assert not torch.equal(MovingDigits(num_videos=3, frames=6, seed=1)[1]["x"], item["x"])
    assert (item["x"][0] != item["x"][-1]).any()  # the digits move
    caption = data.caption(1)
    words = caption.split()
    assert words[0] == "a" and words[2:4] == ["and", "a"] and words[-1] in ("apart", "together")
    assert int(words[1]) == int(item["y"])
    assert TextTokenizer(8).decode(item["text"]) == caption
    test = moving_digits(split="test", num_videos=3, frames=6)
    assert not torch.equal(test[1]["x"], item["x"])
    with pytest.raises(ValueError, match="split"):
        moving_digits(split="valid")


def test_bouncing_shapes_and_tiny_clip() -> None:
    shapes = BouncingShapes(num_videos=2, frames=5, image_size=16, shape_size=6)
    item = shapes[0]
    assert item["x"].shape == (5, 3, 16, 16)
    lit = (item["x"] > -1).any(dim=1).flatten(1).sum(1)
    assert torch.all(lit == lit[0]) and lit[0] > 0  # one shape, fully inside every frame
    clip = TinyClip(frames=8, image_size=16)
    assert len(clip) == 2 * 17 and clip[0]["x"].shape == (8, 3, 16, 16)
    torch.testing.assert_close(clip[17]["x"], clip[0]["x"].flip(-1))
    assert len(tiny_clip(split="test", frames=8)) == 17


def test_video_folder(tmp_path) -> None:
    write_video(tmp_path / "a.mp4", torch.rand(10, 3, 8, 8))
    (tmp_path / "sub").mkdir()
    write_video(tmp_path / "sub" / "b.gif", torch.rand(4, 3, 8, 8))
    data = VideoFolder(str(tmp_path), frames=4, image_size=8, channels=1, stride=2)
    assert len(data) == 4 + 1  # a.mp4: starts 0, 2, 4, 6; b.gif: start 0
    assert data[0]["x"].shape == (4, 1, 8, 8)
    with pytest.raises(ValueError, match="at least 20 frames"):
        VideoFolder(str(tmp_path), frames=20, image_size=8)
    with pytest.raises(FileNotFoundError):
        VideoFolder(str(tmp_path / "nowhere"))


def test_tokenizer_and_embedding() -> None:
    tok = TextTokenizer(max_tokens=6)
    ids = tok.encode("A 3 and a 7, moving!")
    assert ids.shape == (6,) and tok.decode(ids) == "a 3 and a 7 moving"
    with pytest.raises(ValueError, match="vocabulary"):
        tok.encode("a dragon")
    with pytest.raises(ValueError, match="at most 6"):
        tok.encode("a 1 and a 2 moving apart")
    embed = TextEmbedding(tok.vocab_size, 6, 8)
    out = embed(torch.stack([ids, tok.encode("a 3")]))
    assert out.shape == (2, 6, 8)
    assert torch.equal(out[0, :2], out[1, :2]) and not torch.equal(out[0, 2], out[1, 2])
