"""Two gloo ranks on CPU: the denoiser's own optimizer stays in sync; rank-0 sampling works."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from flows.video import VideoTransformerFlow

    torch.manual_seed(0)  # identical initial weights on every rank
    model = VideoTransformerFlow(
        frames=2,
        image_size=4,
        patch_size=2,
        width=16,
        num_heads=2,
        local_blocks=1,
        local_depth=1,
        global_depth=1,
        denoiser_width=16,
        denoiser_depth=1,
    )
    with torch.no_grad():
        for block in [*model.local, model.global_block]:
            block.out.weight.normal_(std=0.1)
    model.train()
    torch.manual_seed(100 + rank)  # different data on every rank
    for _ in range(2):
        model.loss({"x": torch.rand(2, 2, 1, 4, 4) * 2 - 1})
        model.after_optimizer_step()
    torch.save(model.denoiser.state_dict(), f"{out_dir}/rank{rank}.pt")
    if rank == 0:  # the trainer samples on the main rank only: no collective may run here
        videos = model.sample_for_logging(1, torch.Generator().manual_seed(0))
        torch.save(videos, f"{out_dir}/samples.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_denoiser_updates_are_averaged_over_ranks(tmp_path) -> None:
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    first, second = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0)
    assert first["out.weight"].abs().max() > 0  # the zero-initialised output moved
    assert torch.load(tmp_path / "samples.pt").shape == (1, 2, 1, 4, 4)
