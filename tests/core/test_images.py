"""core.images: the PNG grid writer (gaps, backgrounds, videos, scale) and reading grids back."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from core.images import grid_tiles, read_image, save_image_grid


def _pixels(path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.tensor(list(image.getdata()), dtype=torch.float32)


def test_grey_grid_with_gaps_places_every_tile(tmp_path) -> None:
    images = torch.rand(5, 1, 4, 6)
    path = save_image_grid(images, tmp_path / "sub" / "grid.png", columns=3)
    with Image.open(path) as image:
        assert image.mode == "L" and image.size == (3 * 7 + 1, 2 * 5 + 1)
        grid = torch.tensor(list(image.getdata()), dtype=torch.float32).reshape(11, 22) / 255
    tile = grid[1 + 5 : 1 + 5 + 4, 1 + 7 : 1 + 7 + 6]  # image 4: row 1, column 1
    torch.testing.assert_close(tile, (images[4, 0] * 255).round() / 255)
    assert grid[0].eq(1).all() and grid[:, 7].eq(1).all()  # white gaps
    assert grid[6:10, 15:21].eq(1).all()  # the empty sixth cell stays background


def test_tiled_grid_reads_back_exactly(tmp_path) -> None:
    images = (torch.randint(0, 256, (5, 3, 8, 8)) / 255.0)
    path = save_image_grid(images, tmp_path / "tiles.png", columns=4, gap=0, background=0.0)
    grid = read_image(path)
    assert grid.shape == (3, 16, 32)
    tiles = grid_tiles(grid, 8)
    torch.testing.assert_close(tiles[:5], images)
    assert tiles[5:].eq(0).all()  # empty cells are black, so a reader can drop them
    with pytest.raises(ValueError, match="does not cut into 5x5 tiles"):
        grid_tiles(grid, 5)


def test_text_chunks_are_written_with_the_grid(tmp_path) -> None:
    path = save_image_grid(torch.rand(2, 3, 4, 4), tmp_path / "marked.png", gap=0,
                           text={"normkit-tile": "4"})
    with Image.open(path) as image:
        assert image.text == {"normkit-tile": "4"}


def test_videos_take_one_row_each_and_scale(tmp_path) -> None:
    videos = torch.rand(2, 3, 3, 4, 4)
    path = save_image_grid(videos, tmp_path / "strip.png", scale=2)
    with Image.open(path) as image:
        assert image.mode == "RGB" and image.size == (2 * (3 * 5 + 1), 2 * (2 * 5 + 1))


def test_default_columns_and_clamping(tmp_path) -> None:
    path = save_image_grid(torch.full((16, 1, 2, 2), 3.0), tmp_path / "g.png")
    with Image.open(path) as image:
        assert image.size == (4 * 3 + 1, 4 * 3 + 1)  # round(sqrt(16)) columns
    assert _pixels(path).max() == 255


def test_bad_shapes_and_files_are_one_line(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"expected images .* got \(2, 2, 4, 4\)"):
        save_image_grid(torch.rand(2, 2, 4, 4), tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_image(tmp_path / "none.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        read_image(tmp_path / "bad.png")
    assert not (tmp_path / "x.png").exists()
