"""Model files that ship with normkit (package data: config.yaml, model/ weights)."""
