"""A tiny model and dataset that train in seconds: the trainer's smoke test and first example.

``smoke_mlp`` is a denoising regressor: it reads ``x`` with a little Gaussian noise added
(so the loss draws random numbers, which exercises the RNG state saved in checkpoints) and
predicts ``y = sin(x A)`` for a fixed random matrix ``A``. With ``aux_lr > 0`` it also learns an
output offset with its own SGD (momentum 0.9) outside the trainer's optimizer, the way the video
flow trains its denoiser: that SGD's momentum is the model's ``auxiliary_state()``, which the
trainer's checkpoints carry. It follows ``trainers.protocol`` (diffusers ``ModelMixin +
ConfigMixin``; von Platen et al., https://github.com/huggingface/diffusers).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.utils.data import Dataset

__all__ = ["SmokeDataset", "SmokeMLP"]


def _check(name: str, value: float, ok: bool, allowed: str) -> None:
    """A one-line ValueError for a setting out of range (the trainer's CLI: exit 2)."""
    if not ok:
        raise ValueError(f"{name}={value!r} is out of range; allowed: {allowed}")


class SmokeMLP(ModelMixin, ConfigMixin):
    """MLP ``dim -> hidden -> ... -> dim``; ``batchnorm=True`` adds running-statistics norms."""

    @register_to_config
    def __init__(
        self,
        dim: int = 8,
        hidden: int = 32,
        depth: int = 2,
        noise_std: float = 0.1,
        batchnorm: bool = False,
        aux_lr: float = 0.0,
    ) -> None:
        _check("model.dim", dim, dim >= 1, "dim >= 1")
        _check("model.hidden", hidden, hidden >= 1, "hidden >= 1")
        _check("model.depth", depth, depth >= 0, "depth >= 0")
        _check("model.noise_std", noise_std, 0 <= noise_std < float("inf"), "0 <= noise_std")
        _check("model.aux_lr", aux_lr, 0 <= aux_lr < float("inf"), "0 <= aux_lr")
        super().__init__()
        layers: list[nn.Module] = []
        width = dim
        for _ in range(depth):
            layers.append(nn.Linear(width, hidden))
            if batchnorm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.GELU())
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)
        self.optimizer_steps = 0
        self.offset, self._offset_sgd = None, None
        if aux_lr > 0:  # frozen for the trainer; stepped by its own SGD in after_optimizer_step
            self.offset = nn.Parameter(torch.zeros(dim), requires_grad=False)
            self._offset_sgd = torch.optim.SGD([self.offset], lr=aux_lr, momentum=0.9)
        self._offset_grads: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch["x"], batch["y"]
        noisy = x + self.config.noise_std * torch.randn_like(x)
        residual = self(noisy) - y
        if self.offset is not None:
            residual = residual + self.offset
            # d loss / d offset of the mean squared error below, for the offset's own step
            self._offset_grads.append(2.0 * residual.detach().mean(dim=0) / residual.shape[-1])
        error = residual.pow(2).mean(dim=-1)
        return {"loss": error.mean(), "max_error": error.max().detach()}

    @torch.no_grad()
    def sample_for_logging(self, num: int, generator: torch.Generator) -> torch.Tensor:
        """Predictions on random inputs as ``(num, 1, 1, dim)`` grey images in [0, 1]."""
        param = next(self.parameters())
        x = torch.randn(num, self.config.dim, generator=generator, device=generator.device)
        out = torch.sigmoid(self(x.to(param)))
        return out.reshape(num, 1, 1, self.config.dim).float()

    def after_optimizer_step(self) -> None:
        """Count the step; with ``aux_lr``, step the offset on its rank-averaged gradient."""
        self.optimizer_steps += 1
        if self._offset_sgd is None or not self._offset_grads:
            return
        import torch.distributed as dist

        grad = torch.stack(self._offset_grads).mean(dim=0)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(grad)
            grad /= dist.get_world_size()
        self.offset.grad = grad
        self._offset_sgd.step()
        self.offset.grad, self._offset_grads = None, []

    def auxiliary_state(self) -> torch.optim.Optimizer | None:
        """The offset's SGD (its momentum is training state outside the trainer's optimizer)."""
        return self._offset_sgd


class SmokeDataset(Dataset):
    """``num_samples`` items ``{"x": N(0, I_dim), "y": sin(x A)}``, fixed by ``seed``."""

    def __init__(self, num_samples: int = 256, dim: int = 8, seed: int = 0) -> None:
        _check("data.num_samples", num_samples, num_samples >= 1, "num_samples >= 1")
        _check("data.dim", dim, dim >= 1, "dim >= 1")
        _check("data.seed", seed, 0 <= seed < 2**63, "0 <= seed < 2**63")
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(num_samples, dim, generator=generator)
        mixing = torch.randn(dim, dim, generator=generator) / dim**0.5
        self.y = torch.sin(2.0 * self.x @ mixing)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "y": self.y[index]}
