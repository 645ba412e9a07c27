"""The shipped moving-digits video flow: EMA weights trained by configs/moving_digits_video.yaml
(and configs/moving_digits_video_stage2.yaml when config.yaml's trainer.init_from is set),
sampled with guidance 3 (config.yaml, section sample). docs/video-flows.md says how."""
