"""Peak memory of a callable: the allocator's own running total, on CPU as on CUDA.

On CUDA it is ``torch.cuda.max_memory_allocated`` over the call. On CPU torch keeps no peak, but
its profiler records every tensor allocation and free with the allocator's running total
(``profile_memory=True``; the ``[memory]`` events of the trace, "Total Allocated"): the peak is
the largest total seen during the call minus the total before it. That counts every tensor the
call allocates (activations saved for backward, gradients, temporaries), none of the Python or
allocator-cache noise a process's resident size carries, so two variants of a step compare
byte for byte. Profiling slows the call: measure memory and time in separate calls.

    >>> import torch
    >>> peak_memory(lambda: torch.ones(1000, 1000).sum(), torch.device("cpu")) >= 4_000_000
    True
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["peak_memory"]


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Bytes allocated at the peak of ``fn()`` beyond what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    memory = sorted((e for e in events if e.get("name") == "[memory]"
                     and e["args"].get("Device Type") == 0), key=lambda e: float(e["ts"]))
    totals = [(e["args"]["Total Allocated"], e["args"]["Bytes"]) for e in memory]
    if not totals:
        return 0
    before = totals[0][0] - totals[0][1]  # the running total just before the first event
    return max(total for total, _ in totals) - before
