"""benchmarks/quality.py and the flow measures: the table, refusals, motion on known clips."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import quality, quality_flows


def _two_squares(frames: int, step: int, apart: bool) -> np.ndarray:
    """One 16x16 clip (1, frames, 256) of two 3x3 squares on row 6, moving along the row."""
    video = np.zeros((frames, 16, 16))
    for t in range(frames):
        shift = t * step if apart else (frames - 1 - t) * step
        video[t, 6:9, 5 - shift : 8 - shift] = 1.0
        video[t, 6:9, 9 + shift : 12 + shift] = 1.0
    return video.reshape(1, frames, 256)


def test_motion_statistics_measure_known_trajectories() -> None:
    clip = _two_squares(frames=4, step=1, apart=True)
    stats = quality_flows.motion_statistics(clip, apart=np.array([True]))
    assert stats["digit speed"] == pytest.approx(1.0, abs=1e-6)
    assert stats["digit gap"] == pytest.approx(np.mean([4, 6, 8, 10]), abs=1e-6)
    assert stats["mass drift"] == pytest.approx(0.0, abs=1e-9)
    assert stats["apart/together agrees"] == 1.0
    assert stats["frame change"] == pytest.approx(4 * 3 / 256)  # 2 squares x 2 columns x 3 rows
    together = _two_squares(frames=4, step=1, apart=False)
    assert quality_flows.motion_statistics(together, np.array([True]))["apart/together agrees"] == 0
    still = quality_flows.motion_statistics(_two_squares(4, 0, True))
    assert still["digit speed"] == 0 and still["frame change"] == 0


def test_motion_rows_meet_within_the_tolerance_only() -> None:
    assert quality_flows._motion_row("m", "speed", 1.1, 1.0)["met"] is True
    assert quality_flows._motion_row("m", "speed", 1.3, 1.0)["met"] is False


def test_rows_take_their_goal_from_the_benchmark() -> None:
    row = quality_flows._row("m", "C2ST images", 0.8, "c2st")
    assert row["goal"] == "<= 0.75" and row["met"] is False
    assert quality_flows._row("m", "C2ST images", 0.6, "c2st")["met"] is True
    note = quality_flows._row("m", "test bits/dim", 1.2, "report")
    assert note["goal"] == "report" and note["met"] is None


def test_table_prints_one_line_per_row_and_marks_unmet_goals() -> None:
    rows = [
        {"model": "a", "measure": "x", "value": 0.5, "goal": "<= 0.75", "met": True},
        {"model": "a", "measure": "y", "value": 0.9, "goal": "<= 0.75", "met": False},
        {"model": "b", "measure": "z", "value": None, "goal": "", "met": None},
        {"model": "c", "measure": "baseline", "value": 0.1, "goal": None, "met": None},
    ]
    lines = quality.table(rows).splitlines()
    assert len(lines) == 2 + len(rows)
    assert lines[2] == "| a | x | 0.500 | <= 0.75 | yes |"
    assert lines[3].endswith("| **no** |") and lines[4] == "| b | z | - |  |  |"
    assert lines[5] == "| c | baseline | 0.100 |  |  |"  # a reference row: no goal, not 'None'


def test_driver_refuses_unknown_models(capsys) -> None:
    assert quality.main(["--models", "digits_tarflw"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --models 'digits_tarflw'") and err.count("\n") == 1
    with pytest.raises(ValueError, match="not a shipped flow"):
        quality_flows.measure("normal_adapted")


def test_an_absent_family_module_gives_a_row_not_a_crash(monkeypatch) -> None:
    monkeypatch.setitem(quality.FAMILIES, "ghost", "benchmarks.quality_ghost")
    (row,) = quality.measure_model("ghost", quick=True)
    assert row["model"] == "ghost" and "quality_ghost.py is absent" in row["measure"]


def test_real_digits_and_frames_lie_on_the_lattices_of_the_diagnostics() -> None:
    from flows.data import digits

    real = digits("test", size=16).images.flatten(1).double().numpy() / 255.0
    assert np.array_equal(quality_flows.digits_lattice(real, 16), real)
    noisy = real + np.random.default_rng(0).normal(0, 0.004, real.shape)
    assert np.array_equal(quality_flows.digits_lattice(noisy, 16), real)
    frames = np.round(np.arange(17) / 16 * 255) / 255
    assert np.array_equal(quality_flows.grey_levels(frames), frames)
    assert np.array_equal(quality_flows.grey_levels(frames + 0.02), frames)


def test_small_values_keep_their_magnitude() -> None:
    row = {"model": "m", "measure": "Jacobi max abs difference", "value": 8.8e-5, "goal": "",
           "met": None}  # fmt: skip
    assert "| 8.8e-05 |" in quality.table([row])
    assert "| 0.000 |" in quality.table([{**row, "value": 0.0}])


# the shipped video model's data options (flows/pretrained/moving_digits_video/config.yaml)
MOVING_DIGITS = {"image_size": 16, "digit_size": 8, "speed": 1.0, "text_tokens": 8}


def _probe_on_test_clips(clips: int, epochs: int) -> tuple[float, float]:
    """The probe fitted on ``clips`` real training clips, scored on 100 real test clips with
    their own captions and with each clip's neighbour's caption (chance level)."""
    train = quality_flows._clips("train", clips, 8, MOVING_DIGITS)
    probe = quality_flows.PairClassifier(train, epochs=epochs)
    test = quality_flows._clips("test", 100, 8, MOVING_DIGITS)
    own = probe.recognised(test["pixels"], test["pairs"])
    return own, probe.recognised(test["pixels"], np.roll(test["pairs"], 1, axis=0))


def test_a_briefly_fitted_video_probe_already_tells_the_captions_of_real_clips() -> None:
    own, other = _probe_on_test_clips(600, epochs=5)  # measured: 0.51 and 0.05
    assert own >= 0.4 and other <= 0.15


@pytest.mark.slow
def test_the_benchmark_video_probe_recognises_real_clips() -> None:
    own, other = _probe_on_test_clips(3000, epochs=10)  # as video_rows fits it; measured: 1.0
    assert own >= 0.95 and other <= 0.15


def test_the_video_probe_is_fixed_by_its_seed_and_leaves_torch_random_state_alone() -> None:
    import torch

    clips = quality_flows._clips("train", 40, 8, MOVING_DIGITS)
    state = torch.get_rng_state()
    first = quality_flows.PairClassifier(clips, epochs=1, seed=3).scores(clips["pixels"])
    assert torch.equal(torch.get_rng_state(), state)
    again = quality_flows.PairClassifier(clips, epochs=1, seed=3).scores(clips["pixels"])
    other = quality_flows.PairClassifier(clips, epochs=1, seed=4).scores(clips["pixels"])
    assert np.array_equal(first, again) and not np.allclose(first, other)


def test_a_pair_is_recognised_only_as_the_two_top_classes() -> None:
    scores = np.zeros((4, 10))
    scores[:, 3], scores[:, 7], scores[:, 5] = 3.0, 2.0, 1.0
    pairs = np.array([[7, 3], [3, 5], [3, 3], [7, 7]])  # a digit named twice: it must be on top
    assert quality_flows.pair_recognised(scores, pairs).tolist() == [True, False, True, False]


def test_inside_back_facing_counts_only_pixels_away_from_the_silhouette() -> None:
    import torch

    from benchmarks import quality_diffusion

    x = -torch.ones(1, 3, 9, 9)  # black background
    x[0, :, 2:7, 2:7] = torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1)  # a 5x5 figure facing us
    back = torch.tensor([1.0, 0.0, -0.2]).view(3, 1)
    x[0, :, 2, 2:7] = back  # its whole top edge back-facing: on the silhouette, not counted
    x[0, :, 4, 4] = back[:, 0]  # one of the 3x3 inner pixels back-facing
    from diffusion.metrics import clean_normal_maps

    mask = clean_normal_maps(x)[1]
    assert quality_diffusion._inside_back_facing(x, mask) == pytest.approx(1 / 9)
