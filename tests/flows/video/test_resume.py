"""A resumed video-flow run reproduces the uninterrupted run's logged losses exactly.

The learned denoiser has its own AdamW outside the trainer's optimizer; the model offers it
through ``auxiliary_state()`` and the trainer checkpoints and restores it (trainers.protocol).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from trainers import load_config
from trainers.train import train

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "moving_digits_video.yaml"
TINY = [
    "model.frames=2", "model.image_size=8", "model.patch_size=4", "model.width=16",
    "model.num_heads=2", "model.local_blocks=1", "model.local_depth=1", "model.global_depth=1",
    "model.learned_denoiser=true", "model.denoiser_width=16", "model.denoiser_depth=1",
    "data.frames=2", "data.image_size=8", "data.digit_size=4", "data.num_videos=24",
    "data.batch_size=4", "trainer.gradient_accumulation_steps=2", "trainer.warmup_steps=1",
    "trainer.max_steps=6", "trainer.checkpoint_every=3", "trainer.keep_last=5",
    "trainer.log_every=1", "trainer.sample_every=0", "trainer.progress=false",
    "trainer.plot=false",
]  # fmt: skip
LOSSES = ("loss", "bits_per_dim", "denoiser_loss")


def _train(output: Path, *extra: str):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    return train(load_config(str(CONFIG), [f"trainer.output_dir={output}", *TINY, *extra]))


def _losses(metrics: list[dict], after: int) -> list[tuple]:
    return [tuple(r[k] for k in ("step", *LOSSES)) for r in metrics if r["step"] > after]


def test_resumed_video_run_reproduces_every_logged_loss(tmp_path, monkeypatch) -> None:
    reference = _train(tmp_path / "reference")
    expected = _losses(reference.metrics, after=3)
    assert [row[0] for row in expected] == [4, 5, 6]

    def resume(name: str) -> list[tuple]:
        run = tmp_path / name
        shutil.copytree(tmp_path / "reference" / "checkpoint-3", run / "checkpoint-3")
        return _losses(_train(run, "trainer.resume=latest").metrics, after=3)

    assert resume("resumed") == expected
    # the control: without the denoiser's optimizer state the denoiser's steps differ
    from flows.video.model import VideoTransformerFlow

    monkeypatch.setattr(VideoTransformerFlow, "auxiliary_state", lambda self: None)
    unaided = resume("without_auxiliary_state")
    assert [row[3] for row in unaided] != [row[3] for row in expected]
