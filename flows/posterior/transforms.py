r"""Fixed bijections applied before a posterior flow: box priors to R (logit), then whitening.

Parameters of one posterior often live on wildly different scales (a pulsar distance of 3000 pc,
a spin frequency of 185 Hz and an amplitude of 1e-5 in one chain). A flow trained on such raw
numbers wastes its capacity (or NaNs) on the scales, so every posterior flow first maps

    x  --(logit of the box coordinates, bounded parameters only)-->  u
    u  --(whitening  y = L^{-1} (u - m),  L L^T = Cov[u])-------->  y

with m, L fitted once on the training samples, and adds the exact log-Jacobian of both steps to
the flow's density, so ``log_prob`` is always a density in the original parameter space.
Fitting the flow in the logit space of a box prior keeps its mass inside the box (the
"mass outside bounded supports" pitfall of flow-based evidence, McEwen et al. 2021,
arXiv:2111.12720, section 4). This module always computes in float64, whatever the dtype of
the network that follows: subtracting the mean of 3000-ish numbers in float32 would already
lose the posterior width.

References:
    J. D. McEwen, C. G. R. Wallis, M. A. Price, A. Spurio Mancini, "Machine learning assisted
    Bayesian model selection", arXiv:2111.12720.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["Preprocessing", "parse_bounds"]

BoundsLike = Sequence[tuple[float | None, float | None] | None] | np.ndarray | None


def parse_bounds(bounds: BoundsLike, features: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds as float64 arrays of length ``features`` (+-inf = unbounded).

    ``bounds`` is None (all unbounded), an array of shape (features, 2), or a sequence with one
    entry per parameter: ``None`` or ``(lo, hi)`` where either side may be None/inf. A
    parameter needs both sides finite to get the logit map; one-sided bounds are accepted
    and treated as unbounded (rely on the temperature for those).
    """
    lower = np.full(features, -np.inf)
    upper = np.full(features, np.inf)
    if bounds is None:
        return lower, upper
    entries = list(bounds)
    if len(entries) != features:
        raise ValueError(
            f"bounds has {len(entries)} entries but the samples have {features} parameters; "
            "give one (lo, hi) or None per parameter"
        )
    for j, entry in enumerate(entries):
        if entry is None:
            continue
        pair = list(np.asarray(entry, dtype=object).ravel())
        if len(pair) != 2:
            raise ValueError(f"bounds[{j}] = {entry!r}; expected (lo, hi) or None")
        lo = -np.inf if pair[0] is None else float(pair[0])
        hi = np.inf if pair[1] is None else float(pair[1])
        if not lo < hi:
            raise ValueError(f"bounds[{j}] = ({lo}, {hi}); the lower bound must be below the upper")
        lower[j], upper[j] = lo, hi
    return lower, upper


class Preprocessing(nn.Module):
    """x -> y: logit of the box-bounded coordinates, then whitening; always float64.

    Arguments:
        lower, upper: bounds per parameter (+-inf = unbounded; logit only where both finite).
        shift: mean m of the logit-space training samples, shape (d,).
        cholesky: lower-triangular L with L L^T the covariance (or its diagonal), shape (d, d).

    Build it with :meth:`from_samples`.
    """

    def __init__(
        self, lower: np.ndarray, upper: np.ndarray, shift: np.ndarray, cholesky: np.ndarray
    ) -> None:
        super().__init__()
        f64 = torch.float64
        self.features = int(len(shift))
        self.register_buffer("lower", torch.as_tensor(lower, dtype=f64))
        self.register_buffer("upper", torch.as_tensor(upper, dtype=f64))
        bounded = np.isfinite(lower) & np.isfinite(upper)
        self.register_buffer("bounded", torch.as_tensor(bounded))
        self.register_buffer("shift", torch.as_tensor(shift, dtype=f64))
        self.register_buffer("cholesky", torch.as_tensor(cholesky, dtype=f64))
        width = np.where(bounded, np.asarray(upper) - np.asarray(lower), 1.0)
        self.register_buffer("log_width", torch.as_tensor(np.log(width), dtype=f64))
        self.register_buffer(
            "log_det_whiten",
            -torch.log(torch.diagonal(self.cholesky)).sum(),
        )

    @classmethod
    def from_samples(
        cls, samples: np.ndarray, bounds: BoundsLike = None, whiten: str = "full"
    ) -> Preprocessing:
        """Fit the shift and the whitening to (n, d) samples; ``whiten`` is full or diagonal."""
        x = np.asarray(samples, dtype=np.float64)
        features = x.shape[1]
        lower, upper = parse_bounds(bounds, features)
        check_inside(x, lower, upper)
        u = _logit_np(x, lower, upper)
        shift = u.mean(axis=0)
        std = u.std(axis=0)
        flat = np.flatnonzero(~(std > 0))
        if len(flat):
            raise ValueError(
                f"parameter {flat[0]} is constant in the samples (value {x[0, flat[0]]!r}); "
                "a density needs every parameter to vary: drop the constant columns"
            )
        if whiten == "diagonal" or features == 1:
            cholesky = np.diag(std)
        elif whiten == "full":
            corr = np.corrcoef(u, rowvar=False)
            corr = corr + 1e-9 * np.eye(features)
            try:
                cholesky = std[:, None] * np.linalg.cholesky(corr)
            except np.linalg.LinAlgError:
                cholesky = np.diag(std)
        else:
            raise ValueError(f"whiten={whiten!r} is unknown; choose 'full' or 'diagonal'")
        return cls(lower, upper, shift, cholesky)

    def _apply(self, fn: Callable, recurse: bool = True) -> Preprocessing:
        # Follow device moves but keep float64: .float() on the flow must not cost precision here.
        for name, buf in self._buffers.items():
            if buf is not None:
                device = fn(buf[:0] if buf.dim() else buf.reshape(1)[:0]).device
                self._buffers[name] = buf.to(device)
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(.., d) x -> (y, log|det dy/dx|), both float64."""
        x = x.to(torch.float64)
        u, log_det = self._logit(x)
        centred = (u - self.shift).unsqueeze(-1)
        lower = self.cholesky.expand(*centred.shape[:-2], -1, -1)
        y = torch.linalg.solve_triangular(lower, centred, upper=False).squeeze(-1)
        return y, log_det + self.log_det_whiten

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """y -> x (float64)."""
        u = y.to(torch.float64) @ self.cholesky.T + self.shift
        return self._sigmoid(u)

    def _logit(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not bool(self.bounded.any()):
            return x, x.new_zeros(x.shape[:-1])
        width = torch.exp(self.log_width)
        p = ((x - self.lower.where(self.bounded, 0.0)) / width).clamp(1e-300, 1.0)
        log_p, log_q = torch.log(p), torch.log1p(-p)
        u = torch.where(self.bounded, log_p - log_q, x)
        log_det = torch.where(self.bounded, -self.log_width - log_p - log_q, 0.0).sum(-1)
        return u, log_det

    def _sigmoid(self, u: torch.Tensor) -> torch.Tensor:
        if not bool(self.bounded.any()):
            return u
        lower = self.lower.where(self.bounded, 0.0)
        inside = lower + torch.exp(self.log_width) * torch.sigmoid(u)
        inside = torch.minimum(torch.maximum(inside, lower), self.upper.where(self.bounded, 0.0))
        return torch.where(self.bounded, inside, u)

    def outside(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean (..,) mask of points outside the box (where the density is zero)."""
        x = x.to(torch.float64)
        out = (x <= self.lower) | (x >= self.upper)
        return (out & self.bounded).any(-1)


def _logit_np(x: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    bounded = np.isfinite(lower) & np.isfinite(upper)
    if not bounded.any():
        return x
    u = x.copy()
    p = (x[:, bounded] - lower[bounded]) / (upper[bounded] - lower[bounded])
    u[:, bounded] = np.log(p) - np.log1p(-p)
    return u


def check_inside(x: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> None:
    """Raise when samples lie on or outside a finite bound (the logit map needs the interior)."""
    bounded = np.isfinite(lower) & np.isfinite(upper)
    bad = ((x <= lower) | (x >= upper)) & bounded
    if bad.any():
        rows, cols = np.nonzero(bad)
        j = cols[0]
        raise ValueError(
            f"{len(np.unique(rows))} sample rows lie on or outside the bounds; e.g. parameter {j} "
            f"= {x[rows[0], j]!r} with bounds ({lower[j]}, {upper[j]}); the bounds must strictly "
            "contain every sample"
        )
