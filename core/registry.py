"""The one model-kind registry: each kind is declared once, beside its code, as lazy strings.

A *kind* is what ``model.name`` in a config names (``tarflow``, ``video_tarflow``,
``normal_adapted``, ...). Its :class:`ModelKind` says, as ``"module:attribute"`` strings that are
imported only when used: the model class, the datasets it trains on (``data.name`` -> factory),
the function ``sample.py`` calls, the knobs it renamed (an old name in a config or in an old
checkpoint is refused with a hint naming the new one) and the models shipped inside the package.
The design follows DiT's one table of named models (Peebles & Xie, "Scalable Diffusion Models
with Transformers", arXiv:2212.09748), made lazy so that ``sample.py --help`` imports no torch.

Where the declarations come from, in this order, on the first question asked:

- the modules of :data:`DECLARING_MODULES` (``flows.kinds``, ``diffusion.kinds``,
  ``trainers.kinds``), each holding a tuple ``KINDS``; they import nothing heavy;
- the modules named in the environment variable ``NORMKIT_KINDS`` (comma-separated), so that a
  user's own package is known to ``sample.py`` and ``python -m trainers.train`` too;
- :func:`register` (or the :func:`register_model` / :func:`register_dataset` decorators) at run
  time; there the references may be the objects themselves instead of strings.

>>> from core.registry import get_kind
>>> get_kind("tarflow").model
'flows.image:TransformerFlow'
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "DECLARING_MODULES",
    "ModelKind",
    "ShippedModel",
    "available_datasets",
    "available_models",
    "constructor_parameters",
    "get_dataset",
    "get_kind",
    "get_model",
    "get_sampler",
    "kinds",
    "refuse_renamed",
    "register",
    "register_dataset",
    "register_model",
    "resolve",
    "shipped_folder",
    "shipped_models",
]

DECLARING_MODULES: tuple[str, ...] = ("flows.kinds", "diffusion.kinds", "trainers.kinds")
ENVIRONMENT_VARIABLE = "NORMKIT_KINDS"

Reference = str | Callable[..., Any]  # "module:attribute", or the object itself


def _check_reference(reference: Any, what: str) -> None:
    if isinstance(reference, str):
        module, colon, attribute = reference.partition(":")
        if not (module and colon and attribute) or ":" in attribute:
            raise ValueError(f"{what} {reference!r} must read 'module:attribute'")
    elif not callable(reference):
        raise ValueError(f"{what} must be a 'module:attribute' string or a callable")


@dataclass(frozen=True)
class ShippedModel:
    """A trained model that ships inside a package: ``folder`` is ``"package:path/inside"``.

    The folder is a checkpoint folder (``config.yaml`` + ``model/`` [+ ``ema/``]); the
    ``description`` is one line for ``sample.py --list``.
    """

    folder: str
    description: str

    def __post_init__(self) -> None:
        package, colon, inside = self.folder.partition(":")
        if not (package and colon and inside):
            raise ValueError(f"shipped model folder {self.folder!r} must read 'package:path'")
        if "\n" in self.description:
            raise ValueError(f"the description of {self.folder!r} must be one line")


@dataclass(frozen=True)
class ModelKind:
    """Everything normkit needs to train, load and sample one model kind.

    Arguments:
        name: the ``model.name`` of configs and checkpoints.
        model: the model class (diffusers ``ModelMixin + ConfigMixin``, see trainers.protocol).
        datasets: ``data.name`` -> dataset factory ``factory(**kwargs) -> Dataset``.
        sampler: ``sampler(checkpoint: Path, config: dict, options: dict) -> dict`` called by
            ``sample.py`` (``options`` holds only what the user gave; the summary is printed as
            JSON), or None when the kind cannot be sampled.
        renamed: old knob -> new knob of the model section (and of saved weights' config.json).
        shipped: shipped model name -> :class:`ShippedModel`.
    """

    name: str
    model: Reference
    datasets: Mapping[str, Reference] = field(default_factory=dict)
    sampler: Reference | None = None
    renamed: Mapping[str, str] = field(default_factory=dict)
    shipped: Mapping[str, ShippedModel] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"a model kind needs a name, got {self.name!r}")
        _check_reference(self.model, f"the model of kind {self.name!r}")
        for dataset, reference in self.datasets.items():
            _check_reference(reference, f"dataset {dataset!r} of kind {self.name!r}")
        if self.sampler is not None:
            _check_reference(self.sampler, f"the sampler of kind {self.name!r}")
        for old, new in self.renamed.items():
            if old == new:
                raise ValueError(f"kind {self.name!r} renames {old!r} to itself")
        for mapping in ("datasets", "renamed", "shipped"):
            object.__setattr__(self, mapping, MappingProxyType(dict(getattr(self, mapping))))


_KINDS: dict[str, ModelKind] = {}
_DATASETS: dict[str, Reference] = {}  # every kind's datasets plus those registered alone
_SHIPPED: dict[str, str] = {}  # shipped name -> kind name
_loaded = False


def _same_object(a: Any, b: Any) -> bool:
    """True for equal references, or one class seen twice (a module imported again)."""
    if a == b:
        return True
    key = ("__module__", "__qualname__")
    return all(getattr(a, k, None) == getattr(b, k, 0) for k in key)


def _refuse_second_dataset(name: str, reference: Reference) -> None:
    if name in _DATASETS and not _same_object(_DATASETS[name], reference):
        raise ValueError(
            f"dataset {name!r} is registered twice ({_DATASETS[name]} and {reference})"
        )


def _add(kind: ModelKind) -> ModelKind:
    previous = _KINDS.get(kind.name)
    if previous is not None and not _same_object(previous.model, kind.model):
        raise ValueError(
            f"model kind {kind.name!r} is registered twice ({previous.model} and {kind.model})"
        )
    for dataset, reference in kind.datasets.items():
        _refuse_second_dataset(dataset, reference)
    for shipped in kind.shipped:
        if _SHIPPED.get(shipped, kind.name) != kind.name:
            raise ValueError(
                f"shipped model {shipped!r} is declared by kinds {_SHIPPED[shipped]!r} and "
                f"{kind.name!r}"
            )
    _KINDS[kind.name] = kind
    _DATASETS.update(kind.datasets)
    _SHIPPED.update(dict.fromkeys(kind.shipped, kind.name))
    return kind


def _load_declarations() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True  # first, so that a declaring module may call register() while imported
    extra = [m.strip() for m in os.environ.get(ENVIRONMENT_VARIABLE, "").split(",") if m.strip()]
    for module_name in (*DECLARING_MODULES, *extra):
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            if module_name in DECLARING_MODULES:
                raise
            raise ValueError(
                f"{ENVIRONMENT_VARIABLE} names {module_name!r}, which cannot be imported: {error}"
            ) from error
        for kind in getattr(module, "KINDS", ()):
            _add(kind)


def register(kind: ModelKind) -> ModelKind:
    """Add a kind declared at run time (user code); returns it. Names must be new."""
    _load_declarations()
    return _add(kind)


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator: ``@register_model("mine")`` registers ``ModelKind("mine", model=cls)``."""

    def decorator(cls: type) -> type:
        register(ModelKind(name, model=cls))
        return cls

    return decorator


def register_dataset(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: make a dataset factory (class or function) available as ``data.name``."""

    def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
        _load_declarations()
        _refuse_second_dataset(name, factory)
        _DATASETS[name] = factory
        return factory

    return decorator


def _unknown(what: str, name: Any, known: Iterable[str]) -> ValueError:
    known = sorted(known)
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"{what} {name!r} is unknown{hint}; choose one of: {', '.join(known)}")


def resolve(reference: Reference, what: str) -> Any:
    """The object a ``"module:attribute"`` reference names (importing the module now)."""
    if not isinstance(reference, str):
        return reference
    module_name, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"{what} lives in {reference!r}, which cannot be imported: {error}"
        ) from error
    if not hasattr(module, attribute):
        raise ValueError(f"{what}: {module_name!r} has no attribute {attribute!r}")
    return getattr(module, attribute)


def kinds() -> dict[str, ModelKind]:
    """Every declared or registered kind by name (nothing heavy is imported)."""
    _load_declarations()
    return dict(_KINDS)


def get_kind(name: str) -> ModelKind:
    """The :class:`ModelKind` called ``name``; a ValueError naming the nearest known kind."""
    _load_declarations()
    if name not in _KINDS:
        raise _unknown("model", name, _KINDS)
    return _KINDS[name]


def get_model(name: str) -> type:
    """The model class of kind ``name`` (its module is imported on first use)."""
    return resolve(get_kind(name).model, f"model {name!r}")


def get_dataset(name: str) -> Callable[..., Any]:
    """The dataset factory registered as ``name`` (its module is imported on first use)."""
    _load_declarations()
    if name not in _DATASETS:
        raise _unknown("dataset", name, _DATASETS)
    return resolve(_DATASETS[name], f"dataset {name!r}")


def get_sampler(name: str) -> Callable[..., dict[str, Any]]:
    """The ``sample.py`` entry point of kind ``name``."""
    kind = get_kind(name)
    if kind.sampler is None:
        samplers = sorted(k for k, v in _KINDS.items() if v.sampler is not None)
        raise ValueError(
            f"model kind {name!r} has no sampler; sample.py samples: {', '.join(samplers)}"
        )
    return resolve(kind.sampler, f"the sampler of model kind {name!r}")


def available_models() -> list[str]:
    """Sorted names of every kind (nothing is imported)."""
    return sorted(kinds())


def available_datasets() -> list[str]:
    """Sorted names of every dataset (nothing is imported)."""
    _load_declarations()
    return sorted(_DATASETS)


def shipped_models() -> dict[str, tuple[ModelKind, ShippedModel]]:
    """Every declared shipped model: name -> (its kind, its declaration), sorted by name.

    A declared model whose folder is absent (not trained yet, or left out of this
    installation) is included; :func:`shipped_folder` tells where it should be.
    """
    _load_declarations()
    return {n: (_KINDS[k], _KINDS[k].shipped[n]) for n, k in sorted(_SHIPPED.items())}


def shipped_folder(name: str) -> Path:
    """Where the shipped model ``name`` lives (found without importing its package)."""
    models = shipped_models()
    if name not in models:
        raise _unknown("shipped model", name, models)
    package, _, inside = models[name][1].folder.partition(":")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"shipped model {name!r}: package {package!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / inside


def refuse_renamed(
    kind: str, keys: Iterable[str], prefix: str = "model.", source: str = ""
) -> None:
    """A one-line ValueError when ``keys`` hold a knob that kind ``kind`` renamed.

    ``prefix`` is put before the key names in the message (``"model."`` for a config's model
    section, ``""`` for a weights folder's config.json); ``source`` names the file read.
    """
    renamed = get_kind(kind).renamed
    for key in keys:
        if key in renamed:
            where = f" in {source!r}" if source else ""
            raise ValueError(
                f"config key '{prefix}{key}'{where} was renamed to '{prefix}{renamed[key]}'; "
                f"use the new name (kind {kind!r})"
            )


def constructor_parameters(factory: Callable[..., Any]) -> dict[str, inspect.Parameter] | None:
    """Keyword parameters ``factory`` accepts, or None when it takes ``**kwargs`` (anything).

    For diffusers models the signature of ``__init__`` is the one decorated by
    ``register_to_config``; ``functools.wraps`` keeps it visible to ``inspect``.
    """
    target = factory.__init__ if inspect.isclass(factory) else factory
    parameters = {}
    for name, parameter in inspect.signature(target).parameters.items():
        if name == "self":
            continue
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              inspect.Parameter.KEYWORD_ONLY):
            parameters[name] = parameter
    return parameters
