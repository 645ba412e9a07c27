"""The random-number states of one process as JSON lists, and back (no pickle).

Exact resume needs every stream a training step may draw from: Python's ``random``, NumPy's
global generator, torch's CPU generator and every CUDA device's generator. Each rank saves its
own (``rng-rank<r>.json`` in a checkpoint), as Accelerate's ``save_state`` does with pickles
(Gugger et al., https://github.com/huggingface/accelerate); here every state is a list of
integers, so reading one back can only ever set a generator.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state"]


def capture_rng_state() -> dict[str, Any]:
    """The current states of python, numpy, torch and cuda generators, JSON-serialisable."""
    version, internal, gauss_next = random.getstate()
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss_next],
        "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached_gaussian)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Any) -> None:
    """Set the generators to ``state`` (from ``capture_rng_state``); ValueError if malformed."""
    try:
        version, internal, gauss_next = state["python"]
        name, keys, position, has_gauss, cached_gaussian = state["numpy"]
        python = (int(version), tuple(int(v) for v in internal), gauss_next)
        numpy = (str(name), np.asarray(keys, dtype=np.uint32), int(position), int(has_gauss),
                 float(cached_gaussian))
        cpu = torch.tensor(state["torch"], dtype=torch.uint8)
        cuda = [torch.tensor(s, dtype=torch.uint8) for s in state.get("cuda", [])]
        random.setstate(python)
        np.random.set_state(numpy)
        torch.set_rng_state(cpu)
    except (KeyError, TypeError, ValueError, OverflowError, RuntimeError) as error:
        raise ValueError(f"random-number state is malformed ({error})") from None
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            raise ValueError(f"random-number state holds {len(cuda)} CUDA generators; this "
                             f"process sees {torch.cuda.device_count()} devices")
        torch.cuda.set_rng_state_all(cuda)
