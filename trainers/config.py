"""Typed training configs: a YAML file in ``configs/`` plus dotted ``key=value`` overrides.

A config has four sections::

    model:     {name: <registered model>, <constructor kwargs of that model>}
    data:      {name: <registered dataset>, batch_size: int, <dataset kwargs>}
    optimizer: OptimizerConfig fields (name, lr, weight_decay, ...)
    trainer:   TrainerConfig fields (max_steps, output_dir, checkpoint_every, resume, ...)

Everything is checked before any work starts: an unknown key or a wrongly typed value raises a
``ValueError`` naming the key, the value and the nearest valid key; the model and dataset keys
are checked against the registered constructor's signature. Design after the config handling of
nanoGPT (Karpathy) and DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers",
arXiv:2212.09748).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core import registry

__all__ = [
    "DataConfig",
    "ModelConfig",
    "OptimizerConfig",
    "TrainConfig",
    "TrainerConfig",
    "config_from_dict",
    "load_config",
    "parse_overrides",
]

MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULES = ("cosine", "constant", "linear")


@dataclass
class ModelConfig:
    """``name`` of a registered model; ``kwargs`` go to its constructor."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def _bounded(
    default: Any, low: float, high: float | None = None, *, open_high: bool = False,
    open_low: bool = False, inf_ok: bool = False, note: str = "",
) -> Any:
    """A numeric config field whose value (unless None) must lie in the given range."""
    bounds = {"low": low, "high": high, "open_low": open_low, "open_high": open_high,
              "inf_ok": inf_ok, "note": note}
    return field(default=default, metadata={"bounds": bounds})


@dataclass
class DataConfig:
    """``name`` of a registered dataset, the per-process batch size, and dataset ``kwargs``."""

    name: str
    batch_size: int = _bounded(dataclasses.MISSING, 1)
    num_workers: int = _bounded(0, 0)
    shuffle: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerConfig:
    """Optimizer choice and hyper-parameters (see ``trainers.optim`` for the update rules).

    ``lr`` is the learning rate of the named optimizer; for the hybrid optimizers (muon,
    normuon, conda) the non-matrix parameters use AdamW with ``adamw_lr`` (default: ``lr``).
    """

    name: str = "adamw"
    lr: float = _bounded(1e-3, 0)
    weight_decay: float = _bounded(0.0, 0)
    beta1: float = _bounded(0.9, 0, 1, open_high=True)
    beta2: float = _bounded(0.999, 0, 1, open_high=True)
    eps: float = _bounded(1e-8, 0, open_low=True)
    momentum: float = _bounded(0.95, 0, 1, open_high=True)
    nesterov: bool = True
    ns_steps: int = _bounded(5, 1)
    normuon_beta2: float = _bounded(0.95, 0, 1, open_high=True)
    conda_update_period: int = _bounded(10, 1)
    delta: float = _bounded(0.1, 0)
    wd_ratio: float = _bounded(0.1, 0, 1)
    adamw_lr: float | None = _bounded(None, 0, note="null: optimizer.lr")


@dataclass
class TrainerConfig:
    """Everything about the loop: length, schedule, precision, EMA, logging, checkpoints.

    ``max_grad_norm``: clip the gradient norm to this value; 0 or null turn clipping off (and
    the gradient norm is then not logged); ``.inf`` logs the norm without clipping.
    ``threads``: torch intra-op threads of each process (null: torch's default, one per core).
    ``overwrite``: start a new run in a folder that holds an earlier one, deleting its outputs.
    ``init_from``: start a new run from the weights of a checkpoint, run folder or shipped model
    name (its raw ``model/`` weights; fine-tuning): the model config must build the same
    parameter shapes; optimizer, schedule, EMA and step start afresh. A resumed run ignores it.
    ``activation_checkpointing``: recompute each transformer block's activations in the backward
    pass (diffusers UNets: their gradient checkpointing); ``compile``: ``torch.compile`` the loss
    (``trainers.speedups``). Sharding (FSDP2) is chosen by the launch (``trainers.sharding``).
    """

    output_dir: str = "runs/default"
    max_steps: int = _bounded(1000, 1)
    seed: int = _bounded(0, 0, 2**32 - 1, note="numpy's seeds end there; set_seed seeds numpy")
    gradient_accumulation_steps: int = _bounded(1, 1)
    max_grad_norm: float | None = _bounded(1.0, 0, inf_ok=True, note="0 or null: no clipping")
    mixed_precision: str = "no"
    activation_checkpointing: bool = False
    compile: bool = False
    warmup_steps: int = _bounded(0, 0)
    lr_schedule: str = "cosine"
    min_lr_ratio: float = _bounded(0.0, 0, 1)
    ema_decay: float | None = _bounded(None, 0, 1, open_high=True, note="null: no EMA")
    nap: bool = False
    log_every: int = _bounded(1, 1)
    sample_every: int = _bounded(0, 0, note="0: never")
    num_samples: int = _bounded(16, 1)
    checkpoint_every: int = _bounded(0, 0, note="0: only at the end")
    keep_last: int = _bounded(3, 1)
    resume: str | None = None
    init_from: str | None = None
    overwrite: bool = False
    tensorboard: bool = False
    max_nonfinite: int = _bounded(10, 1)
    threads: int | None = _bounded(None, 1, note="null: torch's default")
    progress: bool = True
    plot: bool = True
    drop_last: bool = True


@dataclass
class TrainConfig:
    """The full resolved config. ``cfg.trainer.max_steps`` or ``cfg["trainer"]["max_steps"]``."""

    model: ModelConfig
    data: DataConfig
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict in the YAML layout (kwargs flattened into their section)."""
        return {
            "model": {"name": self.model.name, **self.model.kwargs},
            "data": {
                "name": self.data.name,
                "batch_size": self.data.batch_size,
                "num_workers": self.data.num_workers,
                "shuffle": self.data.shuffle,
                **self.data.kwargs,
            },
            "optimizer": dataclasses.asdict(self.optimizer),
            "trainer": dataclasses.asdict(self.trainer),
        }

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.to_dict()[section]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS = ("model", "data", "optimizer", "trainer")


# --------------------------------------------------------------------------- type checking


def _describe(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """``value`` converted to ``annotation`` (int -> float allowed), else a one-line error."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return value
    if isinstance(annotation, str):  # unresolved forward reference: do not guess
        return value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(key, value, option)
            except ValueError as error:
                errors.append(error)
        raise _bad_type(key, value, annotation)
    if origin is typing.Literal:
        if value in typing.get_args(annotation):
            return value
        raise _bad_type(key, value, annotation)
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        if isinstance(value, list | tuple):
            args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
            if len(args) == 1 or (origin is tuple and args and len(set(args)) == 1):
                value = [_coerce(key, v, args[0]) for v in value]
            return tuple(value) if (origin or annotation) is tuple else list(value)
        raise _bad_type(key, value, annotation)
    if origin is dict or annotation is dict:
        if isinstance(value, dict):
            return value
        raise _bad_type(key, value, annotation)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _bad_type(key, value, annotation)
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _bad_type(key, value, annotation)
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _bad_type(key, value, annotation)
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise _bad_type(key, value, annotation)
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise _bad_type(key, value, annotation)
    return value


def _bad_type(key: str, value: Any, annotation: Any) -> ValueError:
    return ValueError(f"config key {key!r}: value {value!r} is not of type {_describe(annotation)}")


def _unknown_key(key: str, value: Any, valid: list[str]) -> ValueError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
    return ValueError(f"config key {key!r} (value {value!r}) is unknown{hint}")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(value, list(allowed), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"config key {key!r}: value {value!r} is not allowed{hint}; "
            f"choose one of: {', '.join(allowed)}"
        )


def _range_text(name: str, bounds: dict[str, Any]) -> str:
    low = f"{bounds['low']} {'<' if bounds['open_low'] else '<='} {name}"
    if bounds["high"] is None:
        text = f"{name} {'>' if bounds['open_low'] else '>='} {bounds['low']}"
    else:
        text = f"{low} {'<' if bounds['open_high'] else '<='} {bounds['high']}"
    return text + (f" ({bounds['note']})" if bounds["note"] else "")


def _check_bounds(section: str, obj: Any) -> None:
    """Every bounded numeric field of ``obj`` in range and finite (one-line ValueError)."""
    for f in dataclasses.fields(obj):
        bounds, value = f.metadata.get("bounds"), getattr(obj, f.name)
        if bounds is None or value is None:
            continue
        low, high = bounds["low"], bounds["high"]
        finite = math.isfinite(value) or (bounds["inf_ok"] and value == math.inf)
        above = value > low if bounds["open_low"] else value >= low
        below = high is None or (value < high if bounds["open_high"] else value <= high)
        if not (finite and above and below):
            fault = "is out of range" if finite else "is not a finite number"
            raise ValueError(f"config key '{section}.{f.name}': value {value!r} {fault}; "
                             f"allowed: {_range_text(f.name, bounds)}")


def _dataclass_from(cls: type, section: str, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    valid = [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise _unknown_key(f"{section}.{key}", value, valid)
        kwargs[key] = _coerce(f"{section}.{key}", value, hints[key])
    return cls(**kwargs)


def _check_kwargs(
    section: str, name: str, factory: Any, kwargs: dict[str, Any], reserved: list[str]
) -> dict[str, Any]:
    """Check ``kwargs`` against the constructor of ``factory`` (types from its annotations)."""
    parameters = registry.constructor_parameters(factory)
    if parameters is None:
        return kwargs
    try:
        target = factory.__init__ if inspect.isclass(factory) else factory
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: check names only
        hints = {}
    valid = [f"{section}.{k}" for k in reserved + list(parameters)]
    checked = {}
    for key, value in kwargs.items():
        if key not in parameters:
            raise _unknown_key(f"{section}.{key}", value, valid)
        annotation = hints.get(key, parameters[key].annotation)
        if isinstance(annotation, str):
            annotation = inspect.Parameter.empty
        checked[key] = _coerce(f"{section}.{key}", value, annotation)
    missing = [
        k for k, p in parameters.items()
        if p.default is inspect.Parameter.empty and k not in kwargs
    ]
    if missing:
        raise ValueError(
            f"config section {section!r} ({section} {name!r}) misses required key(s): "
            f"{', '.join(f'{section}.{k}' for k in missing)}"
        )
    return checked


# --------------------------------------------------------------------------- building


def config_from_dict(raw: dict[str, Any], check_model: bool = True) -> TrainConfig:
    """A ``TrainConfig`` from a nested dict, every key and type checked.

    ``check_model=False`` skips resolving the model/dataset classes (used when only reading a
    checkpoint's settings).
    """
    if not isinstance(raw, dict):
        raise ValueError(f"config must be a mapping of sections {SECTIONS}, got {raw!r}")
    for section, values in raw.items():
        if section not in SECTIONS:
            raise _unknown_key(str(section), values, list(SECTIONS))
        if not isinstance(values, dict):
            raise ValueError(f"config section {section!r} must be a mapping, got {values!r}")
    for section in ("model", "data"):
        if section not in raw or "name" not in raw[section]:
            raise ValueError(f"config key '{section}.name' is missing (the registered {section})")

    model_raw = dict(raw["model"])
    model_name = _coerce("model.name", model_raw.pop("name"), str)
    if model_name in registry.available_models():
        registry.refuse_renamed(model_name, model_raw)
    if check_model:
        try:
            model_cls = registry.get_model(model_name)
        except ValueError as error:
            raise ValueError(f"config key 'model.name': {error}") from None
        model_raw = _check_kwargs("model", model_name, model_cls, model_raw, ["name"])
    model = ModelConfig(model_name, model_raw)

    data_raw = dict(raw["data"])
    data_fixed = {"name": data_raw.pop("name")}
    if "batch_size" not in data_raw:
        raise ValueError("config key 'data.batch_size' is missing (per-process batch size)")
    for key in ("batch_size", "num_workers", "shuffle"):
        if key in data_raw:
            data_fixed[key] = data_raw.pop(key)
    data_name = _coerce("data.name", data_fixed["name"], str)
    if check_model:
        try:
            factory = registry.get_dataset(data_name)
        except ValueError as error:
            raise ValueError(f"config key 'data.name': {error}") from None
        data_raw = _check_kwargs(
            "data", data_name, factory, data_raw, ["name", "batch_size", "num_workers", "shuffle"]
        )
    data = _dataclass_from(DataConfig, "data", {**data_fixed, "kwargs": data_raw})
    _check_bounds("data", data)

    from trainers.optim import OPTIMIZERS

    optimizer = _dataclass_from(OptimizerConfig, "optimizer", raw.get("optimizer", {}))
    _choice("optimizer.name", optimizer.name, OPTIMIZERS)
    _check_bounds("optimizer", optimizer)
    trainer = _dataclass_from(TrainerConfig, "trainer", raw.get("trainer", {}))
    _choice("trainer.mixed_precision", trainer.mixed_precision, MIXED_PRECISION)
    _choice("trainer.lr_schedule", trainer.lr_schedule, LR_SCHEDULES)
    _check_bounds("trainer", trainer)
    if trainer.overwrite and trainer.resume is not None:
        raise ValueError(f"config keys 'trainer.overwrite' (true) and 'trainer.resume' "
                         f"({trainer.resume!r}) contradict each other: overwrite starts a new run, "
                         "resume continues one; set only one")
    return TrainConfig(model, data, optimizer, trainer)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``3e-4`` (no dot) as a string; this loader reads it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml_load(stream: Any) -> Any:
    return yaml.load(stream, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)


def _parse_value(text: str) -> Any:
    try:
        return _yaml_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def parse_overrides(overrides: list[str]) -> list[tuple[list[str], Any]]:
    """``["optimizer.lr=3e-4", ...]`` -> ``[(["optimizer", "lr"], 0.0003), ...]`` (YAML values)."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2 or not all(parts):
            raise ValueError(
                f"override key {key!r} (value {text!r}) must be section.key with a section in "
                f"{', '.join(SECTIONS)}"
            )
        parsed.append((parts, _parse_value(text)))
    return parsed


def load_config(
    path: str | Path, overrides: list[str] | None = None, check_model: bool = True
) -> TrainConfig:
    """Read ``path`` (YAML), apply ``overrides`` (``section.key=value``), check everything."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    with open(path) as handle:
        try:
            raw = _yaml_load(handle) or {}
        except yaml.YAMLError as error:
            first = str(error).splitlines()[0]
            raise ValueError(f"config file {str(path)!r} is not valid YAML: {first}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of sections, got {raw!r}")
    for (section, key), value in parse_overrides(overrides or []):
        if section not in SECTIONS:
            raise _unknown_key(f"{section}.{key}", value, list(SECTIONS))
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ValueError(f"config section {section!r} must be a mapping, got {raw[section]!r}")
        raw[section][key] = value
    return config_from_dict(raw, check_model=check_model)
