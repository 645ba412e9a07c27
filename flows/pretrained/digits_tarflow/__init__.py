"""The shipped digits TARFlow: configs/digits_tarflow.yaml trained 1200 steps (see README)."""
