"""Image grids as PNG files: write samples (images or videos) and read images back as tensors.

One writer serves the samplers and the trainer's sample logs. Tiles are separated by ``gap``
pixels of ``background``: 1-pixel white gaps make a grid easy to look at (the flows' samples,
the trainer's logs); ``gap=0`` keeps every tile at a fixed offset so that a grid can be cut back
into its tiles (:func:`grid_tiles`; the normal maps the diffusion models write and read). Pixels
are ``round(255 x)`` of values clamped to [0, 1]; PIL (Clark et al., https://python-pillow.org)
writes and reads the PNG files.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["grid_tiles", "read_image", "save_image_grid"]


def save_image_grid(
    images: torch.Tensor,
    path: str | Path,
    columns: int | None = None,
    gap: int = 1,
    background: float = 1.0,
    scale: int = 1,
    text: dict[str, str] | None = None,
) -> Path:
    """Write images in [0, 1] as one PNG grid; returns the path (its folder is created).

    Arguments:
        images: ``(B, C, H, W)`` images (``columns`` per row, default ``round(sqrt(B))``) or
            ``(B, T, C, H, W)`` videos (one row of ``T`` frames each); ``C`` is 1 or 3.
        path: the PNG file.
        gap: pixels between tiles and around the grid, filled with ``background`` (0 = black,
            1 = white); ``gap=0`` also leaves empty cells at ``background``.
        scale: integer nearest-neighbour upscaling of the whole grid.
        text: PNG text chunks (key -> value) written with the image.
    """
    from PIL import Image, PngImagePlugin

    if images.dim() == 5:
        columns = images.shape[1]
        images = images.flatten(0, 1)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"expected images (B, 1 or 3, H, W) or videos (B, T, 1 or 3, H, W), got "
            f"{tuple(images.shape)}"
        )
    if gap < 0 or scale < 1:
        raise ValueError(f"gap must be >= 0 and scale >= 1, got {gap} and {scale}")
    b, c, h, w = images.shape
    columns = min(b, columns or max(1, round(b**0.5)))
    rows = -(-b // columns)
    grid = torch.full((c, rows * (h + gap) + gap, columns * (w + gap) + gap), float(background))
    for i, image in enumerate(images.detach().float().cpu().clamp(0, 1)):
        row, column = divmod(i, columns)
        top, left = gap + row * (h + gap), gap + column * (w + gap)
        grid[:, top : top + h, left : left + w] = image
    array = (grid * 255).round().byte().permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[..., 0] if c == 1 else array)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = None
    if text:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
    picture.save(path, pnginfo=info)
    return path


def read_image(path: str | Path, channels: int = 3) -> torch.Tensor:
    """An image file as a ``(channels, H, W)`` float32 tensor in [0, 1] (channels 1 or 3)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    try:
        with Image.open(path) as image:
            picture = image.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read image {str(path)!r}: {error}") from None
    array = torch.frombuffer(bytearray(picture.tobytes()), dtype=torch.uint8)
    array = array.reshape(picture.height, picture.width, channels)
    return array.permute(2, 0, 1).float() / 255.0


def grid_tiles(image: torch.Tensor, tile: int) -> torch.Tensor:
    """Cut a ``(C, H, W)`` grid written with ``gap=0`` into its ``(N, C, tile, tile)`` tiles.

    Tiles come row by row; both sides must be multiples of ``tile``.
    """
    c, h, w = image.shape
    if tile < 1 or h % tile or w % tile:
        raise ValueError(f"a {h}x{w} grid does not cut into {tile}x{tile} tiles")
    tiles = image.unfold(1, tile, tile).unfold(2, tile, tile)
    return tiles.permute(1, 2, 0, 3, 4).reshape(-1, c, tile, tile)
