"""The shipped moving-digits video flow: configs/moving_digits_video.yaml, raw weights of a
checkpoint of its 2000-step schedule (step in trainer_state.json; see docs/video-flows.md)."""
