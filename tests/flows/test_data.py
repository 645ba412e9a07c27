"""Bundled image datasets: shapes, 8-bit levels in [-1, 1], disjoint splits, ImageFolder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from flows.data import digits, image_folder, lfw_faces


def _levels_are_8bit(x: torch.Tensor) -> bool:
    ints = (x + 1) * 127.5
    return bool(torch.allclose(ints, ints.round(), atol=1e-4) and x.min() >= -1 and x.max() <= 1)


def test_digits_upsampled_and_native() -> None:
    train, test = digits(size=16), digits(split="test", size=16)
    assert len(train) + len(test) == 1797 and len(test) == 197
    item = train[0]
    assert item["x"].shape == (1, 16, 16) and item["y"].dtype == torch.long
    assert _levels_are_8bit(item["x"]) and item["x"].std() > 0.2
    native = digits(split="all", size=8)
    assert native[0]["x"].shape == (1, 8, 8)
    # native pixels are the 17 original grey levels, scaled to 0..255
    levels = torch.unique(torch.round((native.images.float()) * 16 / 255))
    assert set(levels.tolist()) <= set(range(17))
    train_imgs = {bytes(im.numpy()) for im in digits(size=8).images}
    test_imgs = [bytes(im.numpy()) for im in digits(split="test", size=8).images]
    assert sum(t in train_imgs for t in test_imgs) < 20  # splits are by index; few duplicates
    with pytest.raises(ValueError, match="split 'valid' is unknown"):
        digits(split="valid")


def test_lfw_faces() -> None:
    train, test = lfw_faces(), lfw_faces(split="test")
    assert len(train) == 80 and len(test) == 20
    assert train[0]["x"].shape == (1, 24, 24) and _levels_are_8bit(test[0]["x"])
    assert torch.all(train.labels == 1)
    both = lfw_faces(faces_only=False, split="all")
    assert len(both) == 200 and both.labels.sum() == 100
    with pytest.raises(ValueError, match="size must lie in 1..25"):
        lfw_faces(size=30)


def test_image_folder(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (tmp_path / label).mkdir()
        for i in range(2):
            pixels = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / label / f"{i}.png")
    data = image_folder(str(tmp_path), size=16, split="test")
    assert len(data) == 4
    item = data[3]
    assert item["x"].shape == (3, 16, 16) and item["y"].item() == 1 and _levels_are_8bit(item["x"])
    grey = image_folder(str(tmp_path), size=8, grayscale=True)
    assert grey[0]["x"].shape == (1, 8, 8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder(str(tmp_path / "missing"))
