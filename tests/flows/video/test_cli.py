"""python -m flows.video: text-, image- and video-to-video sampling from a checkpoint folder."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from flows.video import VideoTransformerFlow
from flows.video.__main__ import main
from flows.video.io import read_video, write_video

MODEL = dict(
    frames=3,
    image_size=8,
    in_channels=1,
    patch_size=4,
    width=16,
    num_heads=2,
    local_blocks=1,
    local_depth=1,
    global_depth=1,
    text_tokens=4,
    denoiser_width=16,
    denoiser_depth=1,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from trainers.checkpoint import STATE_FILE

    folder = tmp_path_factory.mktemp("run") / "checkpoint-1"
    model = VideoTransformerFlow(**MODEL)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(folder / "model")
    config = {
        "model": {"name": "video_tarflow", **MODEL},
        "data": {"name": "moving_digits", "batch_size": 2},
        "optimizer": {"name": "adamw"},
        "trainer": {"output_dir": str(folder.parent)},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / STATE_FILE).write_text("{}")
    return folder


def _run(capsys, *args: str) -> tuple[int, dict | None, str]:
    code = main(["--no-progress", *args])
    captured = capsys.readouterr()
    summary = json.loads(captured.out) if code == 0 else None
    return code, summary, captured.err


def test_text_to_video_writes_mp4(checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "v.mp4"
    code, summary, _ = _run(
        capsys,
        "--checkpoint",
        str(checkpoint.parent),
        "--prompt",
        "a 1 and 4",
        "--frames",
        "5",
        "--method",
        "jacobi",
        "--out",
        str(out),
        "--scale",
        "2",
    )
    assert code == 0
    assert len(summary["iterations_per_frame"]) == 5 and summary["frames"] == 5
    assert summary["checkpoint"] == str(checkpoint) and summary["wall_time_s"] > 0
    assert read_video(out).shape[:1] == (5,)


def test_image_and_video_conditioning(checkpoint, tmp_path, capsys) -> None:
    from PIL import Image

    Image.fromarray((torch.rand(8, 8) * 255).byte().numpy()).save(tmp_path / "first.png")
    gif = tmp_path / "i2v.gif"
    code, summary, _ = _run(
        capsys,
        "--checkpoint",
        str(checkpoint),
        "--first-frame",
        str(tmp_path / "first.png"),
        "--frames",
        "4",
        "--method",
        "sequential",
        "--out",
        str(gif),
        "--scale",
        "1",
    )
    assert code == 0 and summary["given_frames"] == 1
    assert read_video(gif).shape[0] == 4
    write_video(tmp_path / "in.mp4", torch.rand(4, 1, 8, 8))
    code, summary, _ = _run(
        capsys,
        "--checkpoint",
        str(checkpoint),
        "--video",
        str(tmp_path / "in.mp4"),
        "--frames",
        "7",
        "--num",
        "2",
        "--out",
        str(tmp_path / "more.png"),
    )
    assert code == 0 and summary["given_frames"] == 4 and summary["sample_shape"][0] == 7


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", "a purple cat"], "vocabulary"),
        (["--class", "1"], "no class labels"),
        (["--frames", "0"], "--frames"),
        (["--method", "fast"], "--method"),
        (["--first-frame", "missing.png"], "does not exist"),
        (["--out", "v.avi"], "--out"),
        (["--denoise", "strong"], "--denoise"),
        (["--guidance", "2"], "guidance needs"),
    ],
)
def test_bad_input_gives_one_line_error(checkpoint, capsys, args, message) -> None:
    code, _, err = _run(capsys, "--checkpoint", str(checkpoint), *args)
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_missing_checkpoint(tmp_path, capsys) -> None:
    code, _, err = _run(capsys, "--checkpoint", str(tmp_path / "none"))
    assert code == 2 and "does not exist" in err


def test_sample_py_entry_point(checkpoint, tmp_path) -> None:
    from PIL import Image

    from flows.video.sampling import sample_video_flow

    config = yaml.safe_load((checkpoint / "config.yaml").read_text())
    out = tmp_path / "strip.png"
    options = {"num": 2, "frames": 4, "out": str(out), "progress": False, "method": "jacobi"}
    summary = sample_video_flow(checkpoint, config, options)
    assert summary["model"] == "video_tarflow" and summary["sample_shape"] == [4, 1, 8, 8]
    assert Image.open(out).size == (4 * 8 * 4, 2 * 8 * 4)  # 2 rows of 4 frames, scale 4
    again = sample_video_flow(checkpoint, config, {**options, "out": str(tmp_path / "b.png")})
    assert again["iterations_per_frame"] == summary["iterations_per_frame"]
    with pytest.raises(ValueError, match="not 'video_tarflow'"):
        sample_video_flow(checkpoint, {"model": {"name": "tarflow"}}, options)


def test_sample_py_dispatches_video_checkpoints(checkpoint, tmp_path, capsys) -> None:
    import sample

    out = tmp_path / "through_sample_py.gif"
    code = sample.main(["--checkpoint", str(checkpoint), "--prompt", "a 1 and 4",
                        "--frames", "4", "--method", "jacobi", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["num"] == 1  # the video default, not the image grid's 64
    assert len(read_video(out)) == 4
    code = sample.main(["--checkpoint", str(checkpoint), "--frames", "0", "--out", str(out)])
    assert code == 2 and "--frames: must be an integer >= 1" in capsys.readouterr().err


def test_parser_names_the_library_choices_and_defaults() -> None:
    """The CLI spells the choices out (so --help needs no torch); they must be the library's."""
    from flows import jacobi, sampling
    from flows.video import __main__ as cli
    from flows.video import sampling as video_sampling

    assert cli.METHODS == sampling.METHODS and cli.DENOISERS == video_sampling.DENOISERS
    assert cli.DEFAULT_JACOBI_THRESHOLD == jacobi.DEFAULT_JACOBI_THRESHOLD
    defaults = vars(cli.build_parser().parse_args(["--checkpoint", "x"]))
    assert {key: defaults[key] for key in video_sampling.DEFAULTS} == video_sampling.DEFAULTS
