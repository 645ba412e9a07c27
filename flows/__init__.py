"""normkit.flows (see the README)."""
