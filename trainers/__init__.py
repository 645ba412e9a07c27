"""normkit.trainers (see the README)."""
