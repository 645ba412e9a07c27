"""normkit.diffusion (see the README)."""
