"""Name -> class registries for trainable models and datasets, so configs choose them by name.

Two ways to appear in a registry:

- a decorator in the package that defines the object::

      from trainers.registry import register_model

      @register_model("tarflow")
      class TransformerFlow(ModelMixin, ConfigMixin): ...

- a lazy ``"module:attribute"`` string in ``BUILTIN_MODELS`` / ``BUILTIN_DATASETS`` below.
  The trainer never imports model packages at import time: the string is resolved (the module
  imported) only when a config names it. Keep these tables in sync with the packages.

A model entry is a ``ModelMixin + ConfigMixin`` class following ``trainers.protocol``; a dataset
entry is a factory ``factory(**kwargs) -> torch.utils.data.Dataset`` (a class or a function)
whose items are dicts of tensors.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from typing import Any

__all__ = [
    "BUILTIN_DATASETS",
    "BUILTIN_MODELS",
    "available_datasets",
    "available_models",
    "constructor_parameters",
    "get_dataset",
    "get_model",
    "register_dataset",
    "register_model",
]

# Built-in names, resolved lazily ("module:attribute"). Keep in sync with the model packages.
# Resolution of a name: import the module; if that import registered the name (decorator), use
# the registered object, else take the attribute. Pointing at the top-level package is the
# robust choice: the package's __init__ imports its submodules, whose decorators register.
BUILTIN_MODELS: dict[str, str] = {
    "tarflow": "flows:TransformerFlow",
    "video_tarflow": "flows:VideoTransformerFlow",
    "normal_adapted": "diffusion:NormalAdaptedDiffusion",
    "normal_aligned": "diffusion:NormalAlignedDiffusion",
    "smoke_mlp": "trainers.smoke:SmokeMLP",
}

BUILTIN_DATASETS: dict[str, str] = {
    "digits": "flows:DigitsDataset",
    "lfw_faces": "flows:LFWFacesDataset",
    "image_folder": "flows:ImageFolderDataset",
    "moving_digits": "flows:MovingDigitsDataset",
    "bouncing_shapes": "flows:BouncingShapesDataset",
    "tiny_clip": "flows:TinyClipDataset",
    "video_folder": "flows:VideoFolderDataset",
    "normal_maps": "diffusion:NormalMapDataset",
    "smoke": "trainers.smoke:SmokeDataset",
}

_MODELS: dict[str, Any] = {}
_DATASETS: dict[str, Callable[..., Any]] = {}


def _register(table: dict[str, Any], kind: str, name: str) -> Callable[[Any], Any]:
    def decorator(obj: Any) -> Any:
        previous = table.get(name)
        if previous is not None and previous is not obj:
            same = getattr(previous, "__qualname__", None) == getattr(obj, "__qualname__", 0)
            if not same:  # re-importing a module (e.g. under a reloader) is harmless
                raise ValueError(f"{kind} {name!r} is registered twice ({previous} and {obj})")
        table[name] = obj
        return obj

    return decorator


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator: make a ``ModelMixin + ConfigMixin`` model available as ``model.name``."""
    return _register(_MODELS, "model", name)


def register_dataset(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: make a dataset factory (class or function) available as ``data.name``."""
    return _register(_DATASETS, "dataset", name)


def _unknown(kind: str, name: str, known: list[str]) -> ValueError:
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"{kind} {name!r} is unknown{hint}; choose one of: {', '.join(known)}")


def _resolve(table: dict[str, Any], builtins: dict[str, str], kind: str, name: str) -> Any:
    if name in table:
        return table[name]
    if name not in builtins:
        raise _unknown(kind, name, sorted(set(table) | set(builtins)))
    module_name, attribute = builtins[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"{kind} {name!r} lives in {builtins[name]!r}, which cannot be imported: {error}"
        ) from error
    if name in table:  # the module registered itself on import
        return table[name]
    obj = getattr(module, attribute, None)
    if obj is None:
        raise ValueError(f"{kind} {name!r}: {module_name!r} has no attribute {attribute!r}")
    table[name] = obj
    return obj


def get_model(name: str) -> type:
    """The model class registered as ``name`` (imports its package on first use)."""
    return _resolve(_MODELS, BUILTIN_MODELS, "model", name)


def get_dataset(name: str) -> Callable[..., Any]:
    """The dataset factory registered as ``name`` (imports its package on first use)."""
    return _resolve(_DATASETS, BUILTIN_DATASETS, "dataset", name)


def available_models() -> list[str]:
    """Sorted names of every registered or built-in model (nothing is imported)."""
    return sorted(set(_MODELS) | set(BUILTIN_MODELS))


def available_datasets() -> list[str]:
    """Sorted names of every registered or built-in dataset (nothing is imported)."""
    return sorted(set(_DATASETS) | set(BUILTIN_DATASETS))


def constructor_parameters(factory: Callable[..., Any]) -> dict[str, inspect.Parameter] | None:
    """Keyword parameters ``factory`` accepts, or None when it takes ``**kwargs`` (anything).

    For diffusers models the signature of ``__init__`` is the one decorated by
    ``register_to_config``; ``functools.wraps`` keeps it visible to ``inspect``.
    """
    target = factory.__init__ if inspect.isclass(factory) else factory
    signature = inspect.signature(target)
    parameters = {}
    for pname, parameter in signature.parameters.items():
        if pname == "self":
            continue
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              inspect.Parameter.KEYWORD_ONLY):
            parameters[pname] = parameter
    return parameters
