"""Atomic file writes and strict JSON: a crash never leaves half a file behind.

What the CLIs, ``PosteriorFlow.save`` and the render caches write goes to a temporary sibling
first and is renamed into place (``os.replace`` is atomic on POSIX and Windows), so a reader
sees either the old file or the complete new one. :func:`json_ready` turns results into values
strict JSON accepts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["json_ready", "write_atomically", "write_text_atomically"]


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, flush it to disk, then rename it
    into place (without the fsync a power cut after the rename could leave an empty file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        with open(tmp, "r+b") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return write_atomically(path, lambda tmp: tmp.write_text(text))


def json_ready(value: Any) -> Any:
    """JSON-ready: numpy and torch scalars and arrays to Python, paths to text, non-finite
    floats to None (JSON has no inf/nan), dict keys to text."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy / torch scalars, arrays
        return json_ready(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
