r"""Fit a posterior flow to samples: standardise, split, train with early stopping, report.

``fit_flow(samples)`` rejects NaN/inf rows (with their count), fits the float64 preprocessing
(logit for box bounds, whitening) on the training rows, trains the flow's networks by
maximum likelihood with Adam on a random training share, evaluates the held-out negative
log-likelihood every epoch and keeps the weights of the best held-out epoch (early stopping
after ``patience`` epochs without improvement). Reported NLLs are per sample, in nats, in the
ORIGINAL parameter space (the Jacobian of the whitening is included), so they are comparable
across flows and with other libraries.

References:
    G. Papamakarios, E. Nalisnick, D. J. Rezende, S. Mohamed, B. Lakshminarayanan,
    "Normalizing Flows for Probabilistic Modeling and Inference", JMLR 2021, arXiv:1912.02762.
    D. P. Kingma, J. Ba, "Adam: A Method for Stochastic Optimization", arXiv:1412.6980.

Example:
    >>> import numpy as np
    >>> from flows.posterior import fit_flow
    >>> x = np.random.default_rng(0).normal(size=(2000, 2)) * [3000.0, 1e-5]
    >>> flow, report = fit_flow(x, epochs=2, progress=False)
    >>> report.epochs
    2
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from flows.posterior.base import PosteriorFlow
from flows.posterior.kinds import FLOWS, build_flow
from flows.posterior.training import mean_nll, train_by_likelihood
from flows.posterior.transforms import BoundsLike, Preprocessing

__all__ = ["FitReport", "FitResult", "fit_flow", "as_rows"]


@dataclass
class FitReport:
    """What a fit did: NLLs per sample in nats (original space), epochs and time."""

    flow: str
    train_nll: float
    held_out_nll: float
    epochs: int
    best_epoch: int
    stopped_early: bool
    time_s: float
    n_train: int
    n_held_out: int
    skipped_steps: int = 0
    history_train: list[float] = field(default_factory=list)
    history_held_out: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


class FitResult(NamedTuple):
    """``flow, report = fit_flow(...)`` or ``result.flow`` / ``result.report``."""

    flow: PosteriorFlow
    report: FitReport


def as_rows(samples: np.ndarray | torch.Tensor, what: str = "samples") -> np.ndarray:
    """(n, d), (nchains, nsamples, d) or (n,) samples -> float64 (N, d); NaN/inf rows rejected."""
    if torch.is_tensor(samples):
        samples = samples.detach().cpu().numpy()
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim == 3:
        x = x.reshape(-1, x.shape[-1])
    if x.ndim != 2:
        raise ValueError(
            f"{what} must have shape (n, d) or (nchains, nsamples, d); got {tuple(x.shape)}"
        )
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{what} contain {int(bad.sum())} rows with NaN or inf (of {len(x)}); "
            "remove them before fitting"
        )
    return x


def fit_flow(
    samples: np.ndarray | torch.Tensor,
    *,
    flow: str = "spline",
    bounds: BoundsLike = None,
    context: np.ndarray | torch.Tensor | None = None,
    held_out: float = 0.2,
    validation: np.ndarray | torch.Tensor | None = None,
    epochs: int = 200,
    patience: int = 10,
    batch_size: int = 512,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    transforms: int = 4,
    hidden: Sequence[int] = (64, 64),
    bins: int = 8,
    whiten: str = "full",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    progress: bool = True,
    max_time: float | None = None,
    **flow_options,
) -> FitResult:
    """Fit a posterior flow to samples and report train / held-out NLL.

    Arguments:
        samples: (n, d) or (nchains, nsamples, d) array; rows with NaN/inf raise ValueError.
        flow: ``"spline"`` (masked autoregressive RQ spline) or ``"transformer"``
            (transformer over parameter tokens; pass ``width``, ``depth``, ``num_heads``, ``norm``).
        bounds: per-parameter ``(lo, hi)`` or None; bounded parameters are fitted in logit space
            so the flow puts no mass outside the box.
        context: optional (n, c) conditioning vectors (a conditional flow).
        held_out: random fraction of rows kept for early stopping (ignored with ``validation``).
        validation: explicit held-out rows instead of a random split (no context then).
        epochs, patience: at most ``epochs`` passes; stop after ``patience`` without a better
            held-out NLL and restore the best weights.
        batch_size, lr, weight_decay: Adam settings (cosine learning-rate decay over ``epochs``).
        transforms, hidden, bins: flow size (``hidden`` is used by the spline flow).
        whiten: ``"full"`` (Cholesky of the covariance) or ``"diagonal"`` standardisation.
        dtype: network dtype (the preprocessing is float64 regardless).
        seed: seeds the split, the initialisation and the batches.
        progress: show a tqdm progress bar. max_time: stop after this many seconds.

    Returns:
        ``FitResult(flow, report)``, a named tuple: ``flow, report = fit_flow(x)``.
    """
    x = as_rows(samples)
    n, features = x.shape
    if flow not in FLOWS:
        raise ValueError(f"flow {flow!r} is unknown; choose one of: {', '.join(FLOWS)}")
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"held_out must lie in (0, 1), got {held_out}")
    ctx = None
    if context is not None:
        ctx = np.asarray(torch.as_tensor(context).cpu().numpy(), dtype=np.float64)
        ctx = ctx.reshape(n, -1) if ctx.size else ctx
        if len(ctx) != n:
            raise ValueError(f"context has {len(ctx)} rows but samples have {n}")
    generator = np.random.default_rng(seed)
    if validation is not None and ctx is not None:
        raise ValueError("validation rows cannot be combined with context; use held_out instead")
    if validation is not None:
        train_rows, val_x = x, as_rows(validation, "validation samples")
        train_ctx = val_ctx = None
    else:
        if n < 10:
            raise ValueError(f"need at least 10 samples to fit a flow, got {n}")
        order = generator.permutation(n)
        n_val = max(2, int(round(held_out * n)))
        train_rows, val_x = x[order[n_val:]], x[order[:n_val]]
        train_ctx = ctx[order[n_val:]] if ctx is not None else None
        val_ctx = ctx[order[:n_val]] if ctx is not None else None
    if val_x.shape[1] != features:
        raise ValueError(f"validation has {val_x.shape[1]} parameters; samples have {features}")

    torch.manual_seed(seed)
    preprocess = Preprocessing.from_samples(train_rows, bounds, whiten)
    options = dict(transforms=transforms, bins=bins, **flow_options)
    if flow == "spline":
        options["hidden"] = tuple(hidden)
    if ctx is not None:
        options["context_features"] = ctx.shape[1]
    model = build_flow(flow, preprocess, **options)
    model.transforms.to(dtype)

    # The preprocessing is fixed: whiten once (float64), then train the networks in ``dtype``.
    with torch.no_grad():
        y_train, ld_train = preprocess(torch.from_numpy(train_rows))
        y_val, ld_val = preprocess(torch.from_numpy(val_x))
    y_train, y_val = y_train.to(dtype), y_val.to(dtype)
    c_train = torch.as_tensor(train_ctx, dtype=dtype) if train_ctx is not None else None
    c_val = torch.as_tensor(val_ctx, dtype=dtype) if val_ctx is not None else None
    offset_train, offset_val = float(ld_train.mean()), float(ld_val.mean())

    def nll(y: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        z, log_det = model.transform_whitened(y, c)
        return -(model.base_log_prob(z) + log_det)

    history = train_by_likelihood(
        model.transforms,
        nll,
        y_train,
        y_val,
        train_context=c_train,
        held_out_context=c_val,
        epochs=epochs,
        patience=patience,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        max_time=max_time,
        progress=progress,
        desc=f"fit_flow[{flow}]",
    )
    report = FitReport(
        flow=flow,
        train_nll=mean_nll(nll, y_train, c_train) - offset_train,
        held_out_nll=history.best_held_out - offset_val,
        epochs=history.epochs,
        best_epoch=history.best_epoch,
        stopped_early=history.stopped_early,
        time_s=history.time_s,
        n_train=len(train_rows),
        n_held_out=len(val_x),
        skipped_steps=history.skipped_steps,
        history_train=[v - offset_train for v in history.train],
        history_held_out=[v - offset_val for v in history.held_out],
    )
    if not math.isfinite(report.held_out_nll):
        raise ValueError(
            f"the fitted flow has a non-finite held-out NLL ({report.held_out_nll}); "
            "check the samples for extreme outliers"
        )
    return FitResult(model, report)
