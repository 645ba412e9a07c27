r"""The common posterior-flow machinery: preprocessing, autoregressive spline transforms, base.

A :class:`PosteriorFlow` is

    x --Preprocessing (logit, whitening; float64)--> y --T_1 ... T_n (splines)--> z ~ N(0, T I)

and offers a torch-Distribution-like interface: ``log_prob(x, temperature=T)``,
``sample(n, temperature=T)``, ``sample_and_log_prob``. The temperature T narrows the Gaussian
base (variance T), giving the concentrated density used by the learned harmonic mean
estimator (McEwen et al. 2021, arXiv:2111.12720): still normalised, with thinner tails than the
posterior. Every transform is autoregressive: a conditioner (MADE in ``spline.py``, a causal
transformer over parameter tokens in ``autoregressive.py``) maps the coordinates to spline
parameters, output j depending on coordinates < j only.

References:
    G. Papamakarios, E. Nalisnick, D. J. Rezende, S. Mohamed, B. Lakshminarayanan,
    "Normalizing Flows for Probabilistic Modeling and Inference", JMLR 2021, arXiv:1912.02762.
    J. D. McEwen, C. G. R. Wallis, M. A. Price, A. Spurio Mancini, "Machine learning assisted
    Bayesian model selection", arXiv:2111.12720.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from core.files import write_atomically
from flows.posterior.rqs import rational_quadratic_spline
from flows.posterior.transforms import BoundsLike, Preprocessing

__all__ = ["AutoregressiveSplineTransform", "PosteriorFlow", "read_flow_file"]

FILE_FORMAT = "normkit-posterior-flow-1"


class AutoregressiveSplineTransform(nn.Module):
    """y -> z coordinatewise by RQ splines whose parameters come from an autoregressive net.

    ``conditioner(y, context) -> (B, d, 3K - 1)`` must make the output of coordinate
    ``order[k]`` depend only on the coordinates ``order[:k]``; ``conditioner.order`` (a long
    tensor) is that visiting order (consecutive transforms alternate it).
    """

    def __init__(self, conditioner: nn.Module, bound: float = 5.0) -> None:
        super().__init__()
        self.conditioner, self.bound = conditioner, bound

    def forward(
        self, y: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.conditioner(y, context)
        z, log_det = rational_quadratic_spline(y, params, self.bound)
        return z, log_det.sum(-1)

    def inverse(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Invert coordinate by coordinate in the autoregressive order: d conditioner passes."""
        y = torch.zeros_like(z)
        for j in self.conditioner.order.tolist():
            params = self.conditioner(y, context)[..., j, :]
            yj, _ = rational_quadratic_spline(z[..., j], params, self.bound, inverse=True)
            y = y.clone()
            y[..., j] = yj
        return y


class PosteriorFlow(nn.Module):
    """A normalised density on the original parameter space (see the module docstring).

    Arguments:
        preprocess: fixed logit + whitening map (float64).
        transforms: autoregressive transforms y -> z, applied in order (each conditioner
            carries its own coordinate order; consecutive ones alternate it).
        context_features: size of the optional conditioning vector.

    Subclasses name their ``kind`` (the ``flow`` entry of their config).
    """

    kind: ClassVar[str] = ""

    def __init__(
        self,
        preprocess: Preprocessing,
        transforms: Sequence[nn.Module],
        context_features: int = 0,
    ) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.transforms = nn.ModuleList(transforms)
        self.features = preprocess.features
        self.context_features = context_features
        self.config: dict = {}

    @classmethod
    def constructor_config(cls, arguments: dict[str, Any]) -> dict[str, Any]:
        """The JSON config of a subclass from its ``__init__`` arguments (``locals()``)."""
        options = {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in arguments.items()
            if k not in ("self", "preprocess", "__class__")
        }
        return {"flow": cls.kind, **options}

    @classmethod
    def from_samples(
        cls,
        samples: torch.Tensor | np.ndarray,
        bounds: BoundsLike = None,
        whiten: str = "full",
        **options,
    ) -> PosteriorFlow:
        """Build an (untrained) flow whose preprocessing is fitted to (n, d) samples."""
        x = np.asarray(torch.as_tensor(samples).detach().cpu().numpy(), dtype=np.float64)
        return cls(Preprocessing.from_samples(x, bounds, whiten), **options)

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the network (the preprocessing is always float64)."""
        for p in self.transforms.parameters():
            return p.dtype
        return torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        return self.preprocess.shift.device

    def _context(self, context: torch.Tensor | np.ndarray | None, batch: int):
        if self.context_features == 0:
            if context is not None:
                raise ValueError("this flow is unconditional; context must be None")
            return None
        if context is None:
            raise ValueError(
                f"this flow is conditional: pass context of shape (n, {self.context_features})"
            )
        context = torch.as_tensor(context, dtype=self.dtype, device=self.device)
        if context.dim() == 1:
            context = context.expand(batch, -1)
        return context

    def transform_whitened(
        self, y: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Whitened y (network dtype) -> base z and log|det dz/dy| (what training optimises)."""
        log_det = y.new_zeros(y.shape[:-1])
        for transform in self.transforms:
            y, ld = transform(y, context)
            log_det = log_det + ld
        return y, log_det

    def inverse_whitened(
        self, z: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Base z -> whitened y."""
        for transform in reversed(self.transforms):
            z = transform.inverse(z, context)
        return z

    def base_log_prob(self, z: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """log N(z; 0, T I)."""
        d = z.shape[-1]
        return -0.5 * (z * z).sum(-1) / temperature - 0.5 * d * math.log(2 * math.pi * temperature)

    def log_prob(
        self,
        x: torch.Tensor | np.ndarray,
        temperature: float = 1.0,
        context: torch.Tensor | np.ndarray | None = None,
    ) -> torch.Tensor:
        """Log density at x (.., d) in the original space; float64 unless x is a float32 tensor.

        Points outside a box bound get -inf. ``temperature`` T < 1 concentrates the density.
        """
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        was_tensor = torch.is_tensor(x)
        x = torch.as_tensor(x, device=self.device)
        out_dtype = x.dtype if was_tensor and x.is_floating_point() else torch.float64
        if x.shape[-1] != self.features:
            raise ValueError(f"x has {x.shape[-1]} parameters; this flow has {self.features}")
        batch_shape = x.shape[:-1]
        x = x.reshape(-1, self.features)
        y, log_det_pre = self.preprocess(x)
        z, log_det = self.transform_whitened(y.to(self.dtype), self._context(context, len(x)))
        lp = self.base_log_prob(z, temperature) + log_det
        lp = lp.to(torch.float64) + log_det_pre
        outside = self.preprocess.outside(x)
        lp = torch.where(outside, torch.full_like(lp, -math.inf), lp)
        return lp.reshape(batch_shape).to(out_dtype)

    def sample(
        self,
        n: int | Sequence[int] = 1,
        temperature: float = 1.0,
        context: torch.Tensor | np.ndarray | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw samples (float64, original space) from the flow with base variance T."""
        return self.sample_and_log_prob(n, temperature, context, generator)[0]

    @torch.no_grad()
    def sample_and_log_prob(
        self,
        n: int | Sequence[int] = 1,
        temperature: float = 1.0,
        context: torch.Tensor | np.ndarray | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples and their log density at the same temperature (float64)."""
        shape = (n,) if isinstance(n, int) else tuple(n)
        count = int(np.prod(shape))
        z = torch.randn(
            count, self.features, generator=generator, dtype=self.dtype, device=self.device
        ) * math.sqrt(temperature)
        y = self.inverse_whitened(z, self._context(context, count))
        x = self.preprocess.inverse(y)
        lp = self.log_prob(x, temperature, context)
        return x.reshape(*shape, self.features), lp.reshape(shape)

    def save(self, path: str | Path) -> Path:
        """Write the flow to one safetensors file: weights + preprocessing, config as JSON.

        The config (the kind and its constructor options) sits in the file's JSON metadata;
        nothing is pickled, so loading a file can never run code. The write is atomic (a
        temporary file renamed into place).
        """
        path = Path(path)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        metadata = {"format": FILE_FORMAT, "config": json.dumps(self.config)}
        write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
        return path

    @classmethod
    def load(cls, path: str | Path) -> PosteriorFlow:
        """Read a flow of this class written by :meth:`save` (any kind: ``load_flow``)."""
        config, tensors = read_flow_file(path)
        kind = config.pop("flow")
        if kind != cls.kind:
            raise ValueError(
                f"{str(path)!r} holds a {kind!r} flow, not a {cls.kind!r} one; read it with "
                "flows.posterior.load_flow"
            )
        return cls.from_state(config, tensors, path)

    @classmethod
    def from_state(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], where: str | Path = "state"
    ) -> PosteriorFlow:
        """Rebuild a flow from its config (without ``flow``) and its state dict."""
        try:
            names = ("lower", "upper", "shift", "cholesky")
            preprocess = Preprocessing(*(tensors[f"preprocess.{k}"].numpy() for k in names))
            flow = cls(preprocess, **config)
            weights = [v for k, v in tensors.items() if k.startswith("transforms.")]
            dtype = next((v.dtype for v in weights if v.is_floating_point()), torch.float32)
            flow.transforms.to(dtype)
            flow.load_state_dict(tensors)
        except (KeyError, TypeError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(
                f"{str(where)!r} does not match a {cls.kind} flow: {first}"
            ) from None
        return flow.eval()


def read_flow_file(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Config and tensors of a flow file; anything but a normkit flow file is a ValueError."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"flow file {str(path)!r} does not exist or is not a file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(
            f"{str(path)!r} is not a safetensors flow file ({type(err).__name__}); "
            "write flows with PosteriorFlow.save"
        ) from None
    if metadata.get("format") != FILE_FORMAT:
        raise ValueError(
            f"{str(path)!r} is a safetensors file but not a normkit posterior flow "
            f"(metadata format {metadata.get('format')!r})"
        )
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} has a broken flow config: {err}") from None
    if not isinstance(config, dict) or "flow" not in config:
        raise ValueError(f"{str(path)!r} has a flow config without its kind: {config!r}")
    return config, tensors
