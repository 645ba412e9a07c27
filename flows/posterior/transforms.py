r"""Fixed bijections applied before a posterior flow: box priors to R (logit), then whitening.

Parameters of one posterior often live on wildly different scales (a pulsar distance of 3000 pc,
a spin frequency of 185 Hz and an amplitude of 1e-5 in one chain). A flow trained on such raw
numbers wastes its capacity (or NaNs) on the scales, so every posterior flow first maps

    x  --(logit of box coordinates; log distance for one-sided bounds)-->  u
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

__all__ = ["Preprocessing", "check_inside", "parse_bounds"]

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
    """x -> y: logit / log of the bounded coordinates, then whitening; always float64.

    Arguments:
        lower, upper: bounds per parameter (+-inf = unbounded on that side). Both finite:
            u = logit((x - lo) / (hi - lo)); lower only: u = log(x - lo); upper only:
            u = -log(hi - x); neither: u = x.
        shift: mean m of the u-space training samples, shape (d,).
        cholesky: lower-triangular L with L L^T the covariance (or its diagonal), shape (d, d).

    Build it with :meth:`from_samples`.
    """

    def __init__(
        self, lower: np.ndarray, upper: np.ndarray, shift: np.ndarray, cholesky: np.ndarray
    ) -> None:
        super().__init__()
        f64 = torch.float64
        self.features = int(len(shift))
        lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
        self.register_buffer("lower", torch.as_tensor(lower, dtype=f64))
        self.register_buffer("upper", torch.as_tensor(upper, dtype=f64))
        self.register_buffer("shift", torch.as_tensor(shift, dtype=f64))
        self.register_buffer("cholesky", torch.as_tensor(cholesky, dtype=f64))
        self.register_buffer(
            "log_det_whiten",
            -torch.log(torch.diagonal(self.cholesky)).sum(),
        )
        self.any_bounds = bool(np.isfinite(lower).any() or np.isfinite(upper).any())

    @classmethod
    def from_samples(
        cls, samples: np.ndarray, bounds: BoundsLike = None, whiten: str = "full"
    ) -> Preprocessing:
        """Fit the shift and the whitening to (n, d) samples; ``whiten`` is full or diagonal."""
        x = np.asarray(samples, dtype=np.float64)
        features = x.shape[1]
        lower, upper = parse_bounds(bounds, features)
        check_inside(x, lower, upper)
        with torch.no_grad():
            u = _unbound(torch.from_numpy(x), torch.from_numpy(lower), torch.from_numpy(upper))
        u = u[0].numpy()
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
                device = fn(buf.reshape(-1)[:0]).device
                self._buffers[name] = buf.to(device)
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(.., d) x -> (y, log|det dy/dx|), both float64."""
        x = x.to(torch.float64)
        if self.any_bounds:
            u, log_det = _unbound(x, self.lower, self.upper)
        else:
            u, log_det = x, x.new_zeros(x.shape[:-1])
        centred = (u - self.shift).unsqueeze(-1)
        lower = self.cholesky.expand(*centred.shape[:-2], -1, -1)
        y = torch.linalg.solve_triangular(lower, centred, upper=False).squeeze(-1)
        return y, log_det + self.log_det_whiten

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """y -> x (float64)."""
        u = y.to(torch.float64) @ self.cholesky.T + self.shift
        return _rebound(u, self.lower, self.upper) if self.any_bounds else u

    def outside(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean (..,) mask of points on or outside a finite bound (density zero there)."""
        x = x.to(torch.float64)
        out = (x <= self.lower) | (x >= self.upper)
        return out.any(-1)


def _unbound(
    x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """x -> u with log|du/dx| summed over the parameters (outside points give NaN-free junk)."""
    has_lo, has_hi = torch.isfinite(lower), torch.isfinite(upper)
    box = has_lo & has_hi
    lo = torch.where(has_lo, lower, 0.0)
    hi = torch.where(has_hi, upper, 0.0)
    width = torch.where(box, hi - lo, 1.0)
    tiny = 1e-300
    dist_lo = (x - lo).clamp_min(tiny)
    dist_hi = (hi - x).clamp_min(tiny)
    p = (dist_lo / width).clamp(tiny, 1.0)
    q = (dist_hi / width).clamp(tiny, 1.0)
    u = torch.where(
        box,
        torch.log(p) - torch.log(q),
        torch.where(has_lo, torch.log(dist_lo), torch.where(has_hi, -torch.log(dist_hi), x)),
    )
    log_det = torch.where(
        box,
        -torch.log(width) - torch.log(p) - torch.log(q),
        torch.where(has_lo, -torch.log(dist_lo), torch.where(has_hi, -torch.log(dist_hi), 0.0)),
    )
    return u, log_det.sum(-1)


def _rebound(u: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_unbound` (results clamped into the closed box)."""
    has_lo, has_hi = torch.isfinite(lower), torch.isfinite(upper)
    box = has_lo & has_hi
    lo = torch.where(has_lo, lower, 0.0)
    hi = torch.where(has_hi, upper, 0.0)
    inside = lo + (hi - lo) * torch.sigmoid(u)
    inside = torch.minimum(torch.maximum(inside, lo), hi)
    return torch.where(
        box,
        inside,
        torch.where(has_lo, lo + torch.exp(u), torch.where(has_hi, hi - torch.exp(-u), u)),
    )


def check_inside(x: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> None:
    """Raise when samples lie on or outside a finite bound (the maps need the interior)."""
    bad = (x <= lower) | (x >= upper)
    if bad.any():
        rows, cols = np.nonzero(bad)
        j = cols[0]
        raise ValueError(
            f"{len(np.unique(rows))} sample rows lie on or outside the bounds; e.g. parameter {j} "
            f"= {x[rows[0], j]!r} with bounds ({lower[j]}, {upper[j]}); the bounds must strictly "
            "contain every sample"
        )
