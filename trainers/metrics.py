"""The training log: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard, loss plot,
and the step clock that prints the expected time to finish once the first steps are timed.

On resume the records up to the resumed step are kept and the later ones (which the resumed run
writes again, identically) are dropped, with a note saying how many; a line left half-written by
a killed run is dropped the same way. Only the main process writes. Follows nanoGPT's habit of
plain-text logs next to the checkpoints (Karpathy, https://github.com/karpathy/nanoGPT).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "StepClock", "duration", "plot_losses"]


def _read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The valid records of a metrics file and the number of unreadable lines."""
    records, broken = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            broken += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
        else:
            broken += 1
    return records, broken


class MetricsLog:
    """Appends step records to ``output_dir/metrics.jsonl`` (and TensorBoard when asked)."""

    def __init__(self, output_dir: Path, resume_step: int | None, tensorboard: bool) -> None:
        self.path = output_dir / "metrics.jsonl"
        self.records: list[dict[str, Any]] = []
        self.notes: list[str] = []
        if resume_step is not None and self.path.exists():
            kept, broken = _read_records(self.path)
            self.records = [r for r in kept if r["step"] <= resume_step]
            dropped = len(kept) - len(self.records) + broken
            if dropped:
                self.notes.append(f"{self.path}: dropped {dropped} line(s) after step "
                                  f"{resume_step} (the resumed run writes those steps again)")
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        os.replace(tmp, self.path)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output_dir / "tensorboard"))

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key != "step":
                    self.writer.add_scalar(key, value, record["step"])

    def close(self, plot: bool) -> None:
        if self.writer is not None:
            self.writer.close()
        if plot and self.records:
            plot_losses(self.path, self.path.with_name("loss.png"))


def plot_losses(metrics_path: Path, out_path: Path) -> None:
    """Loss against step from metrics.jsonl -> PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records, _ = _read_records(metrics_path)
    finite = [r for r in records if math.isfinite(r.get("loss", math.nan))]
    steps, losses = [r["step"] for r in finite], [r["loss"] for r in finite]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, losses, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if losses and min(losses) > 0 and max(losses) / min(losses) > 20:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


class StepClock:
    """Seconds per step, and one line with the expected time to finish after a few steps."""

    WARM_UP_STEPS = 3  # the first steps carry one-off costs (allocation, caches)

    def __init__(self, start_step: int) -> None:
        self.start_step = start_step
        self.tick = time.perf_counter()
        self.first_done: float | None = None
        self.told = False

    def lap(self, step: int, max_steps: int) -> tuple[float, str | None]:
        now = time.perf_counter()
        seconds, self.tick = now - self.tick, now
        if self.first_done is None:
            self.first_done = now
            return seconds, None
        timed = step - self.start_step - 1
        if self.told or timed < self.WARM_UP_STEPS or step >= max_steps:
            return seconds, None
        self.told = True
        per_step = (now - self.first_done) / timed
        left = per_step * (max_steps - step)
        return seconds, (f"step {step}/{max_steps}: {per_step:.3g} s per step, about "
                         f"{duration(left)} to finish")


def duration(seconds: float) -> str:
    """``"4m05s"``, or ``"1h02m"`` from an hour on."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
