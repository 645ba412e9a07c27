r"""The ``auto`` planner: sequential or Jacobi inversion (and which Jacobi chunk), per stage.

References:
    Zhang, et al. Accelerate TarFlow Sampling with GS-Jacobi Iteration. arXiv:2505.12849, 2025
    (block difficulty is uneven; Jacobi pays passes x tokens of arithmetic).
    Song, Meng, Ermon. Accelerating Feedforward Computation via Parallel Nonlinear Equation
    Solving. ICML 2021, arXiv:2002.03629.

A *stage* is a group of autoregressive blocks the sampler inverts with one setting (the image
flow's blocks; the video flow's deep block, and its per-frame blocks). Its candidate settings
are sequential decoding and Jacobi with one or more chunk sizes. The planner predicts each
candidate's seconds, runs the cheapest, and remembers what it saw:

- Pass times, measured once per (stage, rows, device, dtype) on the blocks themselves: per
  block, a cached one-token pass t(1) and a c-token pass t(c) for every candidate chunk c,
  behind a cache of ``stage.context`` positions. A pass over m <= c tokens costs
  t(1) + (t(c) - t(1)) (m - 1) / (c - 1).
- Jacobi work: per block, the passes K and token-passes N of the last Jacobi solve with that
  chunk (before any: a quarter of the chunk's length in passes, over half of its tokens).
  Prediction: sequential = tokens x t(1); Jacobi = K t(1) + (N - K) (t(c) - t(1)) / (c - 1),
  summed over blocks.
- Wall times observed per stage and setting. Once every candidate has run in the same
  situation, the fastest observed one wins; until then each call runs an untried candidate
  (cheapest predicted first), so a wrong prediction costs one call per candidate, never more.

The planner is an explicit object held by a sampler (:mod:`flows.sampling`); models hold no
measurement.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from flows.jacobi import JacobiStats
from norms.transformer import KVCache

__all__ = ["AutoPlanner", "Setting", "Stage", "synchronize", "timed_pass"]


@dataclass(frozen=True)
class Setting:
    """How a stage is inverted: "sequential", or "jacobi" with ``chunk`` tokens (None: the
    stage's own chunk, all its tokens or one video frame)."""

    method: str
    chunk: int | None = None

    @property
    def label(self) -> str:
        """ "sequential", "jacobi" or "jacobi@C"."""
        if self.method == "sequential" or self.chunk is None:
            return self.method
        return f"jacobi@{self.chunk}"


@dataclass(frozen=True)
class Stage:
    """What the planner needs to cost one stage.

    Arguments:
        name: e.g. "blocks", "global", "local".
        blocks: the stage's blocks (``.transformer``, ``.out``, ``.width``).
        rows: rows of one pass (batch; doubled under guidance; times frames for per-frame
            blocks).
        tokens: tokens each block solves per call.
        context: cached positions before a typical pass (sets the attention cost).
        chunk: the tokens of a Jacobi chunk given as None.
        candidates: the settings to choose from.
    """

    name: str
    blocks: tuple[Any, ...]
    rows: int
    tokens: int
    context: int
    chunk: int
    candidates: tuple[Setting, ...]

    def chunk_of(self, setting: Setting) -> int:
        """Tokens per chunk of ``setting`` (1 for sequential)."""
        if setting.method == "sequential":
            return 1
        return min(setting.chunk or self.chunk, self.tokens)


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so that wall times measure it (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed_pass(fn: Callable[[], Any], repeats: int = 3, device: str = "cpu") -> float:
    """Median wall time of ``fn()`` in seconds (one warm-up call first)."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


@torch.no_grad()
def _pass_times(stage: Stage, device: torch.device, dtype: torch.dtype) -> list[dict[int, float]]:
    """Per block: chunk size -> seconds of one cached pass over that many tokens."""
    sizes = sorted({1} | {stage.chunk_of(s) for s in stage.candidates})
    result = []
    for block in stage.blocks:
        h = torch.randn(stage.rows, stage.context + sizes[-1], block.width, device=device,
                        dtype=dtype)  # fmt: skip
        cache = KVCache()
        if stage.context:
            block.transformer(h[:, : stage.context], cache=cache)

        def run(n: int, block: Any = block, h: torch.Tensor = h, cache: KVCache = cache) -> None:
            cache.truncate(stage.context)
            block.out(block.transformer(h[:, stage.context : stage.context + n], cache=cache))

        # the fastest of a few one-pass timings: the least disturbed by other work
        times = {n: min(timed_pass(lambda n=n: run(n), 1, str(device)) for _ in range(2))
                 for n in sizes}  # fmt: skip
        result.append(times)
    return result


class AutoPlanner:
    """Chooses a :class:`Setting` per stage from measured pass times and observed wall times.

    Example:
        >>> import torch
        >>> from flows.image import TransformerFlow
        >>> flow = TransformerFlow(image_size=8, patch_size=2, width=16, num_heads=2,
        ...                        layers_per_block=[1])
        >>> stage = Stage("blocks", tuple(flow.blocks), rows=2, tokens=16, context=8, chunk=16,
        ...               candidates=(Setting("sequential"), Setting("jacobi")))
        >>> planner, key = AutoPlanner(), ("my", "situation")
        >>> first = planner.choose(stage, key, "cpu", torch.float32)  # predicted: pass times
        >>> planner.record(stage, key, first, seconds=1.0, stats=[JacobiStats([16], 16)])
        >>> planner.choose(stage, key, "cpu", torch.float32) != first  # the other, tried once
        True
    """

    def __init__(self) -> None:
        self._pass_times: dict[Hashable, list[dict[int, float]]] = {}
        self._work: dict[Hashable, list[tuple[int, int]]] = {}
        self._seconds: dict[Hashable, dict[str, float]] = {}

    @staticmethod
    def _situation(stage: Stage, key: Hashable) -> Hashable:
        return (stage.name, stage.rows, stage.tokens, key)

    def pass_times(
        self, stage: Stage, device: torch.device | str, dtype: torch.dtype
    ) -> list[dict[int, float]]:
        """Per block: chunk size -> seconds of one pass (measured on first use)."""
        sizes = tuple(sorted({stage.chunk_of(s) for s in stage.candidates}))
        key = (stage.name, stage.rows, stage.context, sizes, str(device), dtype)
        if key not in self._pass_times:
            self._pass_times[key] = _pass_times(stage, torch.device(device), dtype)
        return self._pass_times[key]

    def predict(
        self, stage: Stage, key: Hashable, device: torch.device | str, dtype: torch.dtype
    ) -> dict[str, float]:
        """Predicted seconds of every candidate (label -> seconds)."""
        times = self.pass_times(stage, device, dtype)
        situation = self._situation(stage, key)
        costs = {}
        for setting in stage.candidates:
            if setting.method == "sequential":
                costs[setting.label] = sum(stage.tokens * t[1] for t in times)
                continue
            c = stage.chunk_of(setting)
            chunks = math.ceil(stage.tokens / c)
            guess = max(1.0, c / 4) * chunks
            work = self._work.get((situation, setting.label))
            total = 0.0
            for i, t in enumerate(times):
                passes, token_passes = work[i] if work else (guess, guess * c / 2)
                per_token = (t[c] - t[1]) / (c - 1) if c > 1 else 0.0
                total += passes * t[1] + max(token_passes - passes, 0) * max(per_token, 0.0)
            costs[setting.label] = total
        return costs

    def choose(
        self, stage: Stage, key: Hashable, device: torch.device | str, dtype: torch.dtype
    ) -> Setting:
        """The setting to run now: fastest observed once all ran, else an untried one."""
        observed = self._seconds.get(self._situation(stage, key), {})
        labels = [s.label for s in stage.candidates]
        if all(label in observed for label in labels):
            return min(stage.candidates, key=lambda s: observed[s.label])
        costs = self.predict(stage, key, device, dtype)
        untried = [s for s in stage.candidates if s.label not in observed]
        return min(untried, key=lambda s: costs[s.label])

    def record(
        self,
        stage: Stage,
        key: Hashable,
        setting: Setting,
        seconds: float,
        stats: Sequence[JacobiStats],
    ) -> None:
        """Remember a run: its wall time and, for Jacobi, each block's passes and work."""
        situation = self._situation(stage, key)
        observed = self._seconds.setdefault(situation, {})
        observed[setting.label] = min(observed.get(setting.label, math.inf), seconds)
        if setting.method == "jacobi":
            self._work[(situation, setting.label)] = [(s.passes, s.token_passes) for s in stats]

    def observed(self, stage: Stage, key: Hashable) -> dict[str, float]:
        """Best observed seconds per setting label in this situation (a copy)."""
        return dict(self._seconds.get(self._situation(stage, key), {}))
