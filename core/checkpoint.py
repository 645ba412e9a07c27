"""Checkpoint folders on the inference side: find one, read its config, load its model.

A checkpoint folder is what the trainer writes (and what a shipped model is)::

    checkpoint-<step>/
      config.yaml          the resolved config; ``model.name`` is the kind (core.registry)
      model/               save_pretrained folder of the trained weights
      ema/                 save_pretrained folder of the EMA weights (when trained with EMA)
      trainer_state.json   the trainer's step counters (beside its training_state.* and
                           rng-rank<r>.json files): resuming needs them, sampling does not

A *source* is a checkpoint folder, a run folder (its newest complete ``checkpoint-<step>``) or
the name of a shipped model (``digits_tarflow``; see ``python sample.py --list``). Every failure
a user can cause (missing or damaged config or weights, a ``model.name`` that does not match the
weights, a renamed knob) is a one-line ValueError or FileNotFoundError. Weights are read with
diffusers' ``from_pretrained`` (safetensors; von Platen et al.,
https://github.com/huggingface/diffusers), never with pickle.

>>> from core.checkpoint import load_model
>>> model, config = load_model("digits_tarflow")  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any

from core import registry

__all__ = [
    "CHECKPOINT_PATTERN",
    "STATE_FILE",
    "find_checkpoints",
    "installed_shipped_models",
    "latest_checkpoint",
    "load_model",
    "read_config",
    "resolve_checkpoint",
    "resolve_source",
    "weights_folder",
]

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


def _is_complete(folder: Path, require_trainer_state: bool) -> bool:
    has_state = (folder / STATE_FILE).is_file() or not require_trainer_state
    return (folder / "config.yaml").is_file() and has_state


def find_checkpoints(
    run_dir: str | Path, require_trainer_state: bool = True
) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run directory as ``(step, path)``, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for child in run_dir.iterdir():
        match = CHECKPOINT_PATTERN.match(child.name)
        if match and child.is_dir() and _is_complete(child, require_trainer_state):
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete (resumable) checkpoint of ``run_dir``, or None."""
    found = find_checkpoints(run_dir)
    return found[-1][1] if found else None


def resolve_checkpoint(path: str | Path, require_trainer_state: bool = True) -> Path:
    """``path`` itself when it is a checkpoint folder, else the newest checkpoint inside it.

    Sampling needs only ``config.yaml`` and the weights, so ``require_trainer_state=False``
    also accepts a folder without ``trainer_state.json`` (e.g. a shipped model).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path {str(path)!r} does not exist")
    if _is_complete(path, require_trainer_state):
        return path
    found = find_checkpoints(path, require_trainer_state)
    if not found:
        needed = f"config.yaml and {STATE_FILE}" if require_trainer_state else "config.yaml"
        raise FileNotFoundError(
            f"{str(path)!r} is neither a checkpoint folder nor a run directory with complete "
            f"checkpoint-<step> folders (each needs {needed})"
        )
    return found[-1][1]


def installed_shipped_models() -> dict[str, Path]:
    """Shipped model name -> folder, for the declared models present in this installation."""
    folders = {name: registry.shipped_folder(name) for name in registry.shipped_models()}
    return {name: f for name, f in folders.items() if (f / "config.yaml").is_file()}


def resolve_source(source: str | Path) -> Path:
    """The checkpoint folder of a folder, a run folder or a shipped model name.

    An existing path wins over a shipped name of the same spelling.
    """
    path = Path(source)
    if path.exists():
        return resolve_checkpoint(path, require_trainer_state=False)
    shipped = registry.shipped_models()
    if str(source) in shipped:
        folder = registry.shipped_folder(str(source))
        if not (folder / "config.yaml").is_file():
            raise FileNotFoundError(
                f"shipped model {str(source)!r} is declared but not in this installation "
                f"({str(folder)!r} has no config.yaml)"
            )
        return folder
    installed = list(installed_shipped_models())
    close = difflib.get_close_matches(str(source), installed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise FileNotFoundError(
        f"checkpoint path {str(source)!r} does not exist and is not a shipped model name "
        f"({hint}shipped: {', '.join(installed) or 'none'})"
    )


def read_config(folder: str | Path) -> dict[str, Any]:
    """``folder/config.yaml`` as a dict whose ``model.name`` is a known kind.

    Knobs the kind renamed are refused with a hint naming the new one.
    """
    import yaml

    path = Path(folder) / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {str(folder)!r} has no config.yaml") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"cannot read {str(path)!r}: {first}") from error
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ValueError(f"{str(path)!r} has no 'model' section")
    name = config["model"].get("name")
    if not isinstance(name, str):
        raise ValueError(f"{str(path)!r} has no model.name (the model kind)")
    registry.get_kind(name)  # an unknown kind: one line naming the known ones
    registry.refuse_renamed(name, config["model"], source=str(path))
    return config


def weights_folder(folder: str | Path, use_ema: bool = True) -> Path:
    """``ema/`` when asked for and present, else ``model/``; FileNotFoundError when absent."""
    folder = Path(folder)
    if use_ema and (folder / "ema" / "config.json").is_file():
        return folder / "ema"
    if not (folder / "model" / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint {str(folder)!r} has no model weights folder")
    return folder / "model"


def _weights_config(weights: Path) -> dict[str, Any]:
    path = weights / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {str(path)!r}: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"{str(path)!r} is not a mapping of model settings")
    return config


def load_model(
    source: str | Path, use_ema: bool = True, kind: str | None = None
) -> tuple[Any, dict[str, Any]]:
    """``(model in eval mode on the CPU, config dict)`` of a checkpoint, run or shipped name.

    ``use_ema`` picks the EMA weights when the checkpoint has them (``False``: the raw ones).
    ``kind`` refuses a checkpoint of any other kind (for samplers that serve one kind).
    """
    folder = resolve_source(source)
    config = read_config(folder)
    name = config["model"]["name"]
    if kind is not None and name != kind:
        raise ValueError(f"checkpoint {str(folder)!r} holds a {name!r} model, not {kind!r}")
    model_class = registry.get_model(name)
    weights = weights_folder(folder, use_ema)
    saved = _weights_config(weights)
    saved_class = saved.get("_class_name")
    if saved_class is not None and saved_class != model_class.__name__:
        raise ValueError(
            f"checkpoint {str(folder)!r}: config.yaml names kind {name!r} ({model_class.__name__}) "
            f"but {str(weights)!r} holds a {saved_class}"
        )
    registry.refuse_renamed(name, saved, prefix="", source=str(weights / "config.json"))
    try:
        model = model_class.from_pretrained(str(weights), use_safetensors=True)  # never a .bin
    except Exception as error:  # diffusers and safetensors raise many kinds on damaged files
        reason = (str(error).strip().splitlines() or [""])[0]
        if not isinstance(error, ValueError | OSError):  # e.g. a meta-tensor NotImplementedError
            reason = f"{type(error).__name__}: {reason}"
        raise ValueError(f"cannot load the weights in {str(weights)!r}: {reason}") from error
    return model.eval(), config
