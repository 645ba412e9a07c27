"""Training state without pickle: a nested state_dict as safetensors (tensors) + JSON (the rest).

``flatten`` walks what ``Optimizer.state_dict()``, ``LRScheduler.state_dict()`` and similar
return (dicts, lists, tuples, tensors, numbers, strings, booleans, None), moves every tensor into
a flat ``{key: tensor}`` mapping and leaves a JSON *skeleton* in which each tensor is replaced by
``{"tensor": "<key>"}``. ``unflatten`` reverses it exactly: tuples stay tuples, integer dict keys
(optimizer state is keyed by parameter index) stay integers, non-finite floats survive.

``save_state(folder, name, state)`` writes ``<name>.safetensors`` and ``<name>.json``;
``load_state(folder, name)`` reads them back. Nothing is ever unpickled: a file that is not valid
safetensors or JSON, or a skeleton that names a missing tensor, raises ``CheckpointError`` (a
``ValueError`` with a one-line message). The tensor format is safetensors (Hugging Face,
https://github.com/huggingface/safetensors), chosen because loading it cannot run code.

A sharded (FSDP2) state fits the same scheme: each rank flattens its local shards and writes
``<name>-rank<r>`` files (``save_state(..., rank=r)``), the skeleton being identical across ranks.

>>> import torch
>>> tensors, skeleton = flatten({"state": {0: {"step": 3, "m": torch.ones(2)}}, "b": (0.9, 1.0)})
>>> list(tensors), skeleton["state"]
(['state/0/m'], {'dict': [[0, {'step': 3, 'm': {'tensor': 'state/0/m'}}]]})
>>> unflatten(tensors, skeleton)["b"]
(0.9, 1.0)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when a state is flattened: trainers imports stay light
    import torch

__all__ = [
    "CheckpointError",
    "flatten",
    "load_state",
    "read_json",
    "read_tensors",
    "save_state",
    "state_file_names",
    "unflatten",
]

FORMAT = "normkit-state-1"
# A JSON object with exactly one of these keys is a marker, not a plain dict.
_MARKERS = ("tensor", "tuple", "float", "dict")


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged or does not fit the model (one-line message)."""


def flatten(state: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """``(tensors, skeleton)`` of a nested state; the skeleton is JSON-serialisable."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(state, prefix, tensors)
    return tensors, skeleton


def _child(path: str, key: Any) -> str:
    return f"{path}/{key}" if path else str(key)


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        key = path or "tensor"
        if key in tensors:  # e.g. the keys 0 and "0" side by side
            raise ValueError(f"state entry {key} appears twice")
        local = value.to_local() if hasattr(value, "to_local") else value  # DTensor shard
        tensors[key] = local.detach().cpu().contiguous()
        return {"tensor": key}
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, _child(path, i), tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, _child(path, i), tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise ValueError(f"state key {key!r} at {path or '/'} is a {type(key).__name__}; "
                                 "only str and int keys can be stored without pickle")
        items = {k: _encode(v, _child(path, k), tensors) for k, v in value.items()}
        plain = all(isinstance(k, str) for k in value) and not (
            len(value) == 1 and next(iter(value)) in _MARKERS)
        return items if plain else {"dict": [[k, v] for k, v in items.items()]}
    raise ValueError(f"state entry {path or '/'} is a {type(value).__name__}; only tensors, "
                     "numbers, strings, None, lists, tuples and dicts can be stored without pickle")


def unflatten(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    """The nested state ``flatten`` took apart (raises ``CheckpointError`` on a bad skeleton)."""
    if isinstance(skeleton, list):
        return [unflatten(tensors, v) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if len(skeleton) == 1 and next(iter(skeleton)) in _MARKERS:
        (kind, payload), = skeleton.items()
        if kind == "tensor":
            if payload not in tensors:
                raise CheckpointError(f"the state names tensor {payload!r}, which is missing")
            return tensors[payload]
        if kind == "tuple" and isinstance(payload, list):
            return tuple(unflatten(tensors, v) for v in payload)
        if kind == "float" and payload in ("inf", "-inf", "nan"):
            return float(payload)
        if kind == "dict" and isinstance(payload, list) and all(
                isinstance(p, list) and len(p) == 2 for p in payload):
            return {k: unflatten(tensors, v) for k, v in payload}
        raise CheckpointError(f"malformed state entry {json.dumps(skeleton)[:80]}")
    return {k: unflatten(tensors, v) for k, v in skeleton.items()}


def state_file_names(name: str, rank: int | None = None) -> tuple[str, str]:
    """``(tensor file, JSON file)`` names of one state (``rank``: a per-rank shard)."""
    stem = name if rank is None else f"{name}-rank{rank}"
    return f"{stem}.safetensors", f"{stem}.json"


def save_state(folder: Path, name: str, state: Any, rank: int | None = None) -> None:
    """Write ``state`` as ``<name>.safetensors`` + ``<name>.json`` into ``folder``."""
    from safetensors.torch import save_file

    tensor_file, json_file = state_file_names(name, rank)
    tensors, skeleton = flatten(state)
    save_file(tensors, str(folder / tensor_file))
    document = {"format": FORMAT, "tensors": tensor_file, "state": skeleton}
    (folder / json_file).write_text(json.dumps(document, allow_nan=False))


def read_json(path: Path) -> Any:
    """A JSON file of a checkpoint, or ``CheckpointError`` naming the file and the fault."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {str(path)!r} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint file {str(path)!r} is not valid JSON ({error})") \
            from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file on the CPU, or ``CheckpointError`` naming the file and the fault."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        reason = " ".join(str(error).split())[:120]
        raise CheckpointError(f"checkpoint file {str(path)!r} is not a valid safetensors file "
                              f"({reason})") from None


def load_state(folder: Path, name: str, rank: int | None = None) -> Any:
    """The state ``save_state`` wrote; ``CheckpointError`` for a missing or damaged file."""
    tensor_file, json_file = state_file_names(name, rank)
    document = read_json(folder / json_file)
    if not isinstance(document, dict) or document.get("format") != FORMAT \
            or document.get("tensors") != tensor_file or "state" not in document:
        raise CheckpointError(f"checkpoint file {str(folder / json_file)!r} is not a "
                              f"{FORMAT} state file")
    try:
        return unflatten(read_tensors(folder / tensor_file), document["state"])
    except CheckpointError as error:
        raise CheckpointError(f"{str(folder / json_file)!r}: {error}") from None
