"""Weights folder of the shipped moving-digits video flow (diffusers save_pretrained layout)."""
