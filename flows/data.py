"""Image datasets that need no download: scikit-learn digits, scikit-image faces, ImageFolder.

References:
    Alpaydin, Kaynak. Optical Recognition of Handwritten Digits (UCI, 1998), bundled with
    scikit-learn as ``load_digits`` (1797 images, 8x8, 17 grey levels, 10 classes).
    Huang, Ramesh, Berg, Learned-Miller. Labeled Faces in the Wild. UMass TR 07-49, 2007;
    scikit-image bundles a 25x25 subset (``skimage.data.lfw_subset``: 100 faces, 100 non-faces).

Every dataset yields ``{"x": (C, H, W) float in [-1, 1], "y": long label}`` with 8-bit levels
``x = x_int / 127.5 - 1`` (x_int in 0..255), so a model can recover the integers for uniform
dequantisation. Dataset names (declared in flows/kinds.py): ``digits``, ``lfw_faces``,
``image_folder``; each factory takes ``split="train" | "test"`` and its own options.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["QuantisedImages", "digits", "image_folder", "lfw_faces"]

SPLITS = ("train", "test", "all")


class QuantisedImages(Dataset):
    """Images stored as uint8 (N, C, H, W) with optional labels; optional horizontal flips."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor | None = None, hflip: bool = False
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}"
            )
        self.images, self.labels, self.hflip = images, labels, hflip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        x = self.images[index].float() / 127.5 - 1
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        item = {"x": x}
        if self.labels is not None:
            item["y"] = self.labels[index]
        return item


def _split(n: int, split: str, test_size: int, seed: int = 0) -> np.ndarray:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is unknown; choose one of: {', '.join(SPLITS)}")
    order = np.random.default_rng(seed).permutation(n)
    if split == "all":
        return np.sort(order)
    return np.sort(order[test_size:] if split == "train" else order[:test_size])


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images * 255).round().clamp(0, 255).to(torch.uint8)


def digits(split: str = "train", size: int = 16, test_size: int = 197) -> QuantisedImages:
    """scikit-learn digits as (1, size, size) images; size 8 (native) or an upsampled side.

    The 17 grey levels are mapped to 0..255; upsampling is bilinear. ``test_size`` images
    (a fixed random subset) form the test split.
    """
    from sklearn.datasets import load_digits

    if size < 8:
        raise ValueError(f"digits size must be >= 8 pixels, got {size}")
    data = load_digits()
    index = _split(len(data.images), split, test_size)
    images = torch.from_numpy(data.images[index]).float().unsqueeze(1) / 16.0
    if size != 8:
        images = torch.nn.functional.interpolate(
            images, size=(size, size), mode="bilinear", align_corners=False
        )
    labels = torch.from_numpy(data.target[index]).long()
    return QuantisedImages(_to_uint8(images), labels)


def lfw_faces(
    split: str = "train", size: int = 24, faces_only: bool = True, hflip: bool = True
) -> QuantisedImages:
    """scikit-image's bundled LFW subset: 25x25 greyscale, centre-cropped to ``size`` (<= 25).

    Labels: 1 for a face, 0 for a non-face (only faces with ``faces_only``). 20 faces (and 20
    non-faces) form the test split.
    """
    from skimage.data import lfw_subset

    if not 1 <= size <= 25:
        raise ValueError(f"lfw_faces size must lie in 1..25 pixels, got {size}")
    images = torch.from_numpy(lfw_subset()).float().unsqueeze(1)
    labels = torch.cat([torch.ones(100), torch.zeros(100)]).long()
    if faces_only:
        images, labels = images[:100], labels[:100]
    keep = np.concatenate(
        [
            offset + _split(100, split, test_size=20, seed=offset)
            for offset in range(0, len(images), 100)
        ]
    )
    start = (25 - size) // 2
    images = images[keep, :, start : start + size, start : start + size]
    return QuantisedImages(_to_uint8(images), labels[keep], hflip=hflip and split == "train")


def image_folder(
    root: str,
    split: str = "train",
    size: int = 32,
    grayscale: bool = False,
    hflip: bool = True,
) -> Dataset:
    """A torchvision ImageFolder of your own images (``root/<class>/<image>``), resized and
    centre-cropped to ``size``; ``split`` other than "train" turns flips off (use separate
    folders for separate splits)."""
    from torchvision import datasets, transforms

    if split not in SPLITS:
        raise ValueError(f"split {split!r} is unknown; choose one of: {', '.join(SPLITS)}")
    if not Path(root).is_dir():
        raise FileNotFoundError(f"image folder {root!r} does not exist")
    steps = [transforms.Resize(size), transforms.CenterCrop(size)]
    if grayscale:
        steps.append(transforms.Grayscale(1))
    if hflip and split == "train":
        steps.append(transforms.RandomHorizontalFlip())
    steps.append(transforms.PILToTensor())
    folder = datasets.ImageFolder(root, transform=transforms.Compose(steps))
    return _FolderItems(folder)


class _FolderItems(Dataset):
    """ImageFolder (uint8 tensor, class) pairs as {"x", "y"} items."""

    def __init__(self, folder: Dataset) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, label = self.folder[index]
        return {"x": image.float() / 127.5 - 1, "y": torch.tensor(label, dtype=torch.long)}
