"""Normalize-and-Project (NaP): norms before nonlinearities, weights projected to a fixed norm.

Reference:
    Lyle, Zheng, Khetarpal, Martens, van Hasselt, Pascanu, Dabney. Normalization and effective
    learning rates in reinforcement learning. NeurIPS 2024, arXiv:2407.01800.

(a) :func:`insert_norms` puts a normalization layer in front of every chosen nonlinearity, sized
    from the nearest preceding Linear/Conv (tokens layout after a Linear, maps after a Conv).
(b) :class:`NaPProjector` records each weight matrix's initial Frobenius norm and, via
    :meth:`NaPProjector.project` after every optimizer step, rescales W <- ||W_0|| W / ||W||;
    the (gamma, beta) pair of every norm layer is rescaled JOINTLY to its initial norm. Biases of
    linear layers stay free. The effective learning rate then stays constant.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = insert_norms(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    >>> projector = NaPProjector(model)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.5)
    >>> model(torch.randn(3, 4)).square().sum().backward(); opt.step(); projector.project()
    >>> bool(projector.max_relative_error() < 1e-6)
    True
"""

from __future__ import annotations

import torch
from torch import nn

from norms.registry import available_norms, build_norm, norm_spec

__all__ = ["DEFAULT_NONLINEARITIES", "NaPProjector", "insert_norms"]

DEFAULT_NONLINEARITIES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.ELU,
    nn.SELU,
    nn.LeakyReLU,
    nn.Mish,
    nn.Sigmoid,
)
_LINEAR = (nn.Linear,)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)


def insert_norms(
    model: nn.Module,
    norm: str = "layernorm",
    map_norm: str = "groupnorm",
    before: tuple[type[nn.Module], ...] = DEFAULT_NONLINEARITIES,
) -> nn.Module:
    """Replace every ``before``-type module ``act`` by ``Sequential(norm, act)``, in place.

    The width comes from the nearest Linear (-> token norm ``norm``) or Conv (-> map norm
    ``map_norm``) registered before the activation; an activation with none raises ValueError.
    Returns ``model``.
    """
    width: tuple[str, int] | None = None
    plan: list[tuple[str, str, int]] = []
    for name, module in model.named_modules():
        if isinstance(module, _LINEAR):
            width = ("tokens", module.out_features)
        elif isinstance(module, _CONV):
            width = ("maps", module.out_channels)
        elif isinstance(module, before) and name:
            if width is None:
                raise ValueError(
                    f"insert_norms: no Linear/Conv before activation {name!r}; cannot size its norm"
                )
            plan.append((name, *width))
    if not plan:
        kinds = ", ".join(t.__name__ for t in before)
        raise ValueError(f"insert_norms: the model has no nonlinearity of the types: {kinds}")
    for name, layout, channels in plan:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        act = getattr(parent, child)
        layer = build_norm(norm if layout == "tokens" else map_norm, channels)
        reference = next(model.parameters(), None)
        if reference is not None:
            layer = layer.to(device=reference.device, dtype=reference.dtype)
        setattr(parent, child, nn.Sequential(layer, act))
    return model


def _is_norm(module: nn.Module) -> bool:
    registered = {norm_spec(name).factory for name in available_norms()}
    return isinstance(module, _NORM_TYPES) or type(module) in registered


class NaPProjector:
    """Keeps every weight matrix and every norm's (gamma, beta) at its initial norm.

    Arguments:
        model: the network (after :func:`insert_norms`, if used).
        exclude: parameter-name substrings to leave alone (e.g. ``("embed",)``).

    Call :meth:`project` (or the projector itself) after every ``optimizer.step()``; a model
    following trainers/protocol.py does that in ``after_optimizer_step``.
    """

    def __init__(self, model: nn.Module, exclude: tuple[str, ...] = ()) -> None:
        self.groups: list[tuple[str, list[nn.Parameter], torch.Tensor]] = []
        claimed: set[int] = set()
        for mod_name, module in model.named_modules():
            if not _is_norm(module):
                continue
            params = [
                p
                for p in (getattr(module, "weight", None), getattr(module, "bias", None))
                if isinstance(p, nn.Parameter) and p.requires_grad
            ]
            if params and not any(x in mod_name for x in exclude):
                self._add(mod_name + ".(weight, bias)", params)
                claimed.update(id(p) for p in params)
        for name, p in model.named_parameters():
            if p.dim() >= 2 and id(p) not in claimed and not any(x in name for x in exclude):
                self._add(name, [p])
        if not self.groups:
            raise ValueError("NaPProjector: the model has no weight matrix or norm to project")

    def _add(self, name: str, params: list[nn.Parameter]) -> None:
        initial = self._norm(params)
        if float(initial) > 0.0:
            self.groups.append((name, params, initial))

    @staticmethod
    def _norm(params: list[nn.Parameter]) -> torch.Tensor:
        with torch.no_grad():
            return torch.sqrt(sum(p.detach().square().sum() for p in params))

    @torch.no_grad()
    def project(self) -> None:
        """W <- ||W_0|| W / ||W|| for every recorded group (joint norm for norm gain/bias)."""
        for _, params, initial in self.groups:
            current = self._norm(params)
            if float(current) > 0.0:
                for p in params:
                    p.mul_((initial / current).to(p.dtype))

    __call__ = project

    def max_relative_error(self) -> float:
        """max over groups of | ||W|| / ||W_0|| - 1 | (0 right after :meth:`project`)."""
        return max(abs(float(self._norm(p) / n0) - 1.0) for _, p, n0 in self.groups)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Initial norms by group name (to resume training with the same targets)."""
        return {name: initial.clone() for name, _, initial in self.groups}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the initial norms saved by :meth:`state_dict`."""
        names = [name for name, _, _ in self.groups]
        if sorted(names) != sorted(state):
            raise ValueError(f"NaPProjector: state has groups {sorted(state)}; expected {names}")
        self.groups = [(n, p, state[n].clone()) for n, p, _ in self.groups]
