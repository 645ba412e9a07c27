"""Weights folder of the shipped digits TARFlow (diffusers save_pretrained layout)."""
