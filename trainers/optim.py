"""Normalized optimizers, chosen by name: AdamW, Muon, NorMuon, Conda, AdamP, SGDP.

References:
    - Loshchilov & Hutter, "Decoupled Weight Decay Regularization", arXiv:1711.05101 (AdamW).
    - Jordan et al., "Muon: An optimizer for hidden layers in neural networks" (2024 blog post,
      https://kellerjordan.github.io/posts/muon/); Liu et al., "Muon is Scalable for LLM
      Training", arXiv:2502.16982.
    - Li et al., "NorMuon: Making Muon more efficient and scalable", arXiv:2510.05491.
    - Wang et al., "Conda: Column-Normalized Adam for Training Large Language Models Faster",
      arXiv:2509.24218.
    - Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
      Scale-invariant Weights", arXiv:2006.08217 (AdamP and SGDP).

Which parameter goes where (the rule ``split_parameters`` applies):

- *matrix* parameters go to the orthogonalized / normalized optimizer (Muon, NorMuon, Conda):
  ``p.ndim >= 2`` (conv weights are viewed as ``(out_channels, in_channels * k * k)``), except
  the weights of ``nn.Embedding`` modules and any parameter whose dotted name contains
  ``embed`` or ``head`` (input embeddings and output heads are not hidden layers);
- everything else (biases, norm gains, embeddings, heads) goes to AdamW with
  ``adamw_lr`` (default ``lr``);
- weight decay (decoupled, ``p <- p (1 - lr wd)``) applies to ``ndim >= 2`` parameters only.

AdamW, AdamP and SGDP update every parameter themselves (AdamP/SGDP project only ``ndim >= 2``
parameters, as in the paper). Every update runs in the parameter's own floating dtype (float32
or float64; half-precision parameters are promoted to float32 inside Newton-Schulz and SVD), on
CPU or CUDA. In data-parallel runs gradients are all-reduced before ``step`` so every rank
computes the same update.

Under FSDP2 (parameters, gradients and moments are DTensors sharded on dim 0) the elementwise
rules (AdamW and the moments of every optimizer) work on each rank's shard. What needs a whole
matrix gathers it (``full_tensor``, an all-gather per matrix and step) and every rank computes
the same whole update, of which it applies its own shard: Muon and NorMuon orthogonalise the
gathered momentum direction (NorMuon's per-row second moment is kept whole, one number per row),
Conda gathers the gradient and keeps its state whole (the SVD basis needs the whole first
moment), AdamP/SGDP gather weight, gradient and step for their projection test. The result is
the data-parallel update up to float summation order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from trainers.sharding import local_part, whole

__all__ = [
    "MATRIX_OPTIMIZERS",
    "OPTIMIZERS",
    "AdamP",
    "Conda",
    "Muon",
    "NorMuon",
    "SGDP",
    "build_optimizer",
    "newton_schulz",
    "split_parameters",
]

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32/float64 stay as they are; half precisions are promoted to float32."""
    return torch.promote_types(dtype, torch.float32)


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximate orthogonalisation ``U V^T`` of ``g = U S V^T`` (Muon's quintic iteration).

    ``X <- a X + (b A + c A^2) X`` with ``A = X X^T`` and ``(a, b, c) = (3.4445, -4.7750,
    2.0315)``, starting from ``X = g / ||g||_F``; the wide orientation is used so ``A`` is the
    smaller Gram matrix. The singular values of the result lie roughly in [0.68, 1.13].
    """
    if g.ndim != 2:
        raise ValueError(f"newton_schulz expects a matrix, got shape {tuple(g.shape)}")
    a, b, c = NS_COEFFICIENTS
    x = g.to(_compute_dtype(g.dtype))
    transpose = x.shape[0] > x.shape[1]
    if transpose:
        x = x.mT
    x = x / x.norm().clamp_min(eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    if transpose:
        x = x.mT
    return x.to(g.dtype)


def _as_matrix(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _shape_scale(p: torch.Tensor) -> float:
    rows, cols = _as_matrix(p).shape
    return math.sqrt(max(1.0, rows / cols))


def _evaluate_closure(closure: Callable[[], torch.Tensor] | None) -> torch.Tensor | None:
    """The loss from ``closure`` (evaluated with grad enabled inside a no-grad ``step``)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _check_dense(p: torch.Tensor, name: str) -> None:
    if p.grad is not None and p.grad.is_sparse:
        raise ValueError(f"{name} does not support sparse gradients")


def _descend(p: torch.Tensor, update: torch.Tensor, step_size: float,
             group: dict[str, Any]) -> None:
    """``W <- W (1 - lr wd) - step_size update``; a whole ``update`` is cut to ``p``'s shard."""
    if group["weight_decay"]:
        p.mul_(1.0 - group["lr"] * group["weight_decay"])
    p.add_(local_part(p, update.reshape(p.shape)), alpha=-step_size)


# --------------------------------------------------------------------------- hybrid base


class _HybridOptimizer(Optimizer):
    """Matrix groups (``group["matrix"] is True``) get the subclass's rule, others AdamW."""

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        for group in self.param_groups:
            group.setdefault("matrix", True)

    def _adamw_step(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        # Same formula as torch.optim.AdamW: decay, moments, bias-corrected step.
        grad = p.grad
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        beta1, beta2 = group["adamw_betas"]
        step = state["step"]
        lr = group["lr"]
        if group["weight_decay"]:
            p.mul_(1.0 - lr * group["weight_decay"])
        state["exp_avg"].lerp_(grad, 1.0 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        bias1 = 1.0 - beta1**step
        bias2 = 1.0 - beta2**step
        denom = (state["exp_avg_sq"].sqrt() / math.sqrt(bias2)).add_(group["adamw_eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-lr / bias1)

    def _matrix_step(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = _evaluate_closure(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                _check_dense(p, type(self).__name__)
                if group["matrix"] and p.ndim >= 2:
                    self._matrix_step(p, group)
                else:
                    self._adamw_step(p, group)
        return loss


def _hybrid_defaults(
    lr: float, weight_decay: float, adamw_betas: tuple[float, float], adamw_eps: float
) -> dict[str, Any]:
    if lr <= 0:
        raise ValueError(f"learning rate {lr} must be > 0")
    return {
        "lr": lr,
        "weight_decay": weight_decay,
        "adamw_betas": tuple(adamw_betas),
        "adamw_eps": adamw_eps,
    }


def _momentum_direction(
    p: torch.Tensor, state: dict[str, Any], momentum: float, nesterov: bool
) -> torch.Tensor:
    """``m <- beta m + (1 - beta) g``; Nesterov uses ``beta m + (1 - beta) g`` once more."""
    grad = p.grad
    if "momentum_buffer" not in state:
        state["momentum_buffer"] = torch.zeros_like(p)
    buf = state["momentum_buffer"]
    buf.lerp_(grad, 1.0 - momentum)
    return grad.lerp(buf, momentum) if nesterov else buf.clone()


class Muon(_HybridOptimizer):
    """Muon: momentum, Newton-Schulz orthogonalisation, shape scale ``sqrt(max(1, rows/cols))``.

    Update of a matrix ``W`` with gradient ``g``: ``m <- beta m + (1-beta) g``; ``u = beta m +
    (1-beta) g`` (Nesterov) or ``m``; ``W <- W (1 - lr wd) - lr sqrt(max(1, rows/cols))
    NS5(u)``. Non-matrix groups (``matrix=False``) use AdamW.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
    ) -> None:
        defaults = _hybrid_defaults(lr, weight_decay, adamw_betas, adamw_eps)
        defaults.update(momentum=momentum, nesterov=nesterov, ns_steps=ns_steps)
        super().__init__(params, defaults)

    def _orthogonal_update(self, p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        state = self.state[p]
        direction = _momentum_direction(p, state, group["momentum"], group["nesterov"])
        return newton_schulz(_as_matrix(whole(direction)), steps=group["ns_steps"])

    def _matrix_step(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        update = self._orthogonal_update(p, group)
        _descend(p, update, group["lr"] * _shape_scale(p), group)


class NorMuon(Muon):
    """NorMuon: Muon's orthogonalised update with per-row (neuron-wise) second moments.

    ``O = NS5(u)``; ``v <- lerp(v, mean_row(O^2), 1 - beta2)``; ``O' = O / (sqrt(v) + eps)``;
    ``O'' = O' ||O||_F / ||O'||_F``; ``W <- W (1 - lr wd) - lr sqrt(max(1, rows/cols)) O''``.
    After the first step every row of the update has the same norm.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.02,
        momentum: float = 0.95,
        beta2: float = 0.95,
        eps: float = 1e-10,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
    ) -> None:
        super().__init__(params, lr, momentum, nesterov, ns_steps, weight_decay,
                         adamw_betas, adamw_eps)
        for group in self.param_groups:
            group.setdefault("beta2", beta2)
            group.setdefault("eps", eps)
        self.defaults.update(beta2=beta2, eps=eps)

    def _matrix_step(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        ortho = self._orthogonal_update(p, group)
        state = self.state[p]
        if "row_second_moment" not in state:
            state["row_second_moment"] = ortho.new_zeros(ortho.shape[0], 1)
        v = state["row_second_moment"]
        v.lerp_(ortho.square().mean(dim=1, keepdim=True), 1.0 - group["beta2"])
        normalized = ortho / (v.sqrt() + group["eps"])
        normalized.mul_(ortho.norm() / (normalized.norm() + group["eps"]))
        _descend(p, normalized, group["lr"] * _shape_scale(p), group)


class Conda(_HybridOptimizer):
    """Conda: Adam in the singular basis of the first moment, refreshed every K steps.

    ``m <- lerp(m, g, 1 - beta1)``; at steps 1, 1 + K, 1 + 2K, ... ``P`` is the right singular
    vectors of ``m`` when rows >= cols (project ``x P``) or the left ones otherwise (``P^T x``);
    ``v <- beta2 v + (1 - beta2) (proj g)^2``; ``W <- W (1 - lr wd) - lr sqrt(1 - beta2^t) /
    (1 - beta1^t) back(proj m / (sqrt(v) + eps))``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        update_period: int = 10,
        weight_decay: float = 0.0,
        adamw_betas: tuple[float, float] | None = None,
        adamw_eps: float | None = None,
    ) -> None:
        if update_period < 1:
            raise ValueError(f"Conda update_period {update_period} must be >= 1")
        defaults = _hybrid_defaults(
            lr, weight_decay, adamw_betas or betas, eps if adamw_eps is None else adamw_eps
        )
        defaults.update(betas=tuple(betas), eps=eps, update_period=update_period)
        super().__init__(params, defaults)

    def _matrix_step(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        grad = _as_matrix(whole(p.grad))
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(grad)
            state["exp_avg_sq"] = torch.zeros_like(grad)
        state["step"] += 1
        step = state["step"]
        beta1, beta2 = group["betas"]
        exp_avg = state["exp_avg"]
        exp_avg.lerp_(grad, 1.0 - beta1)
        rows, cols = grad.shape
        if (step - 1) % group["update_period"] == 0:
            u, _, vh = torch.linalg.svd(exp_avg.to(_compute_dtype(exp_avg.dtype)),
                                        full_matrices=False)
            basis = vh.mT if rows >= cols else u
            state["basis"] = basis.to(exp_avg.dtype)
        basis = state["basis"]

        def project(x: torch.Tensor) -> torch.Tensor:
            return x @ basis if rows >= cols else basis.mT @ x

        def project_back(x: torch.Tensor) -> torch.Tensor:
            return x @ basis.mT if rows >= cols else basis @ x

        g_proj = project(grad)
        state["exp_avg_sq"].mul_(beta2).addcmul_(g_proj, g_proj, value=1.0 - beta2)
        direction = project_back(project(exp_avg) / (state["exp_avg_sq"].sqrt() + group["eps"]))
        step_size = group["lr"] * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)
        _descend(p, direction, step_size, group)


# --------------------------------------------------------------------------- AdamP / SGDP


def _radial_projection(
    p: torch.Tensor, grad: torch.Tensor, update: torch.Tensor, delta: float, eps: float
) -> tuple[torch.Tensor, bool]:
    """Remove the radial component of ``update`` when ``p`` looks scale-invariant.

    Views: per output channel ``(out, -1)``, then the whole layer ``(1, -1)``; the first view
    whose max |cos(grad, p)| is below ``delta / sqrt(view width)`` is used.
    """
    for view in (lambda t: t.reshape(t.shape[0], -1), lambda t: t.reshape(1, -1)):
        w, g = view(p), view(grad)
        cosine = torch.nn.functional.cosine_similarity(g, w, dim=1, eps=eps).abs()
        if cosine.max() < delta / math.sqrt(w.shape[1]):
            unit = w / (w.norm(dim=1, keepdim=True) + eps)
            flat = view(update)
            flat = flat - unit * (unit * flat).sum(dim=1, keepdim=True)
            return flat.reshape(update.shape), True
    return update, False


def _projected_update(
    p: torch.Tensor, grad: torch.Tensor, update: torch.Tensor, group: dict[str, Any]
) -> tuple[torch.Tensor, bool]:
    """AdamP/SGDP: ``update`` projected as ``_radial_projection`` does, for ``ndim >= 2`` only.

    Sharded tensors are gathered for the test and the projection, which is then cut back.
    """
    if p.ndim < 2:
        return update, False
    projected, done = _radial_projection(whole(p), whole(grad), whole(update), group["delta"],
                                         group["eps"])
    return (local_part(p, projected) if done else update), done


class AdamP(Optimizer):
    """AdamP: Adam whose step loses its radial component on scale-invariant weights.

    Adam moments and bias correction as in Adam; for ``ndim >= 2`` parameters whose gradient is
    nearly orthogonal to the weight (``max |cos| < delta / sqrt(width)``), the step is projected
    onto the tangent space of the weight and weight decay is scaled by ``wd_ratio``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        nesterov: bool = False,
    ) -> None:
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        delta=delta, wd_ratio=wd_ratio, nesterov=nesterov)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = _evaluate_closure(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                _check_dense(p, "AdamP")
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                state["exp_avg"].mul_(beta1).add_(grad, alpha=1.0 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                bias1 = 1.0 - beta1 ** state["step"]
                bias2 = 1.0 - beta2 ** state["step"]
                denom = (state["exp_avg_sq"].sqrt() / math.sqrt(bias2)).add_(group["eps"])
                if group["nesterov"]:
                    update = (beta1 * state["exp_avg"] + (1.0 - beta1) * grad) / denom
                else:
                    update = state["exp_avg"] / denom
                update, projected = _projected_update(p, grad, update, group)
                ratio = group["wd_ratio"] if projected else 1.0
                if group["weight_decay"]:
                    p.mul_(1.0 - group["lr"] * group["weight_decay"] * ratio)
                p.add_(update, alpha=-group["lr"] / bias1)
        return loss


class SGDP(Optimizer):
    """SGDP: SGD with momentum whose step loses its radial component on scale-invariant weights.

    ``b <- momentum b + (1 - dampening) g``; step ``g + momentum b`` (Nesterov) or ``b``,
    projected as in AdamP; weight decay ``p <- p (1 - lr wd ratio / (1 - momentum))``. Without
    Nesterov the projected step replaces the buffer, as the authors' implementation does.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.1,
        momentum: float = 0.9,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        eps: float = 1e-8,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
    ) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SGDP momentum {momentum} must lie in [0, 1)")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, eps=eps,
                        weight_decay=weight_decay, nesterov=nesterov, delta=delta,
                        wd_ratio=wd_ratio)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = _evaluate_closure(closure)
        for group in self.param_groups:
            momentum = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                _check_dense(p, "SGDP")
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(grad, alpha=1.0 - group["dampening"])
                update = grad + momentum * buf if group["nesterov"] else buf
                update, projected = _projected_update(p, grad, update, group)
                ratio = group["wd_ratio"] if projected else 1.0
                if projected and not group["nesterov"]:
                    # As in the authors' code (clovaai/AdamP), without Nesterov the step
                    # is the buffer itself, so the buffer keeps the projected direction.
                    buf.copy_(update)
                if group["weight_decay"]:
                    p.mul_(1.0 - group["lr"] * group["weight_decay"] * ratio / (1.0 - momentum))
                p.add_(update, alpha=-group["lr"])
        return loss


# --------------------------------------------------------------------------- by name


def split_parameters(
    model: nn.Module,
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """``(matrix, other)`` named trainable parameters by the rule in the module docstring."""
    embedding_params = {
        id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag)
    }
    matrix, other = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lowered = name.lower()
        hidden = p.ndim >= 2 and id(p) not in embedding_params
        if hidden and "embed" not in lowered and "head" not in lowered:
            matrix.append((name, p))
        else:
            other.append((name, p))
    return matrix, other


MATRIX_OPTIMIZERS = ("muon", "normuon", "conda")
OPTIMIZERS = ("adamw", *MATRIX_OPTIMIZERS, "adamp", "sgdp")


def _decay_groups(params: list[tuple[str, nn.Parameter]], weight_decay: float,
                  **extra: Any) -> list[dict[str, Any]]:
    decay = [p for _, p in params if p.ndim >= 2]
    no_decay = [p for _, p in params if p.ndim < 2]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, **extra})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, **extra})
    return groups


def build_optimizer(model: nn.Module, config: Any) -> Optimizer:
    """The optimizer ``config.name`` (an ``OptimizerConfig``) over ``model``'s parameters."""
    name = config.name
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} is unknown; choose one of: {', '.join(OPTIMIZERS)}")
    betas = (config.beta1, config.beta2)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if name == "adamw":
        return torch.optim.AdamW(_decay_groups(named, config.weight_decay), lr=config.lr,
                                 betas=betas, eps=config.eps)
    if name == "adamp":
        return AdamP(_decay_groups(named, config.weight_decay), lr=config.lr, betas=betas,
                     eps=config.eps, delta=config.delta, wd_ratio=config.wd_ratio,
                     nesterov=config.nesterov)
    if name == "sgdp":
        return SGDP(_decay_groups(named, config.weight_decay), lr=config.lr,
                    momentum=config.momentum, nesterov=config.nesterov, eps=config.eps,
                    delta=config.delta, wd_ratio=config.wd_ratio)
    matrix, other = split_parameters(model)
    adamw_lr = config.lr if config.adamw_lr is None else config.adamw_lr
    groups = [{"params": [p for _, p in matrix], "matrix": True,
               "weight_decay": config.weight_decay}] if matrix else []
    groups += _decay_groups(other, config.weight_decay, matrix=False, lr=adamw_lr)
    common = dict(lr=config.lr, weight_decay=config.weight_decay)
    if name == "muon":
        return Muon(groups, momentum=config.momentum, nesterov=config.nesterov,
                    ns_steps=config.ns_steps, adamw_betas=betas, adamw_eps=config.eps, **common)
    if name == "normuon":
        return NorMuon(groups, momentum=config.momentum, beta2=config.normuon_beta2,
                       nesterov=config.nesterov, ns_steps=config.ns_steps, adamw_betas=betas,
                       adamw_eps=config.eps, **common)
    return Conda(groups, betas=betas, eps=config.eps, update_period=config.conda_update_period,
                 adamw_betas=betas, adamw_eps=config.eps, **common)
