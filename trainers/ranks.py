"""What the ranks of one run need from each other: the main process's decisions, and the launcher.

``broadcast_text`` sends a string from the main process to every rank (UTF-8 bytes in a tensor,
no pickle), so a decision taken once (the checkpoint to resume, or the error that stops the run)
is the same everywhere and no rank is left waiting for a peer that gave up.

``stop_with_launcher`` asks the Linux kernel to send this rank SIGTERM when the process that
started it dies (``prctl(PR_SET_PDEATHSIG)``): ``torchrun`` / ``accelerate launch`` start their
ranks in new sessions, so without it ``kill -9`` of the launcher leaves the ranks running.

``free_port`` is a TCP port for the ranks' rendezvous that nobody listens on right now (the
kernel's choice, never a fixed one, so two launches on one machine do not collide).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from typing import Any

__all__ = ["broadcast_text", "free_port", "stop_with_launcher"]

PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_with_launcher() -> bool:
    """Tie this process's life to its launcher's (Linux, under a launcher); True when done."""
    launched = "LOCAL_RANK" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ
    if not (sys.platform.startswith("linux") and launched):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return False
    if os.getppid() == 1:  # the launcher died before the request: nobody would signal us
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def broadcast_text(accelerator: Any, text: str) -> str:
    """``text`` of the main process on every rank (the other ranks' ``text`` is ignored)."""
    if accelerator.num_processes == 1:
        return text
    import torch
    import torch.distributed as dist

    device = accelerator.device
    payload = torch.tensor(list(text.encode()), dtype=torch.uint8, device=device)
    size = torch.tensor([payload.numel()], dtype=torch.long, device=device)
    dist.broadcast(size, src=0)
    if not accelerator.is_main_process:
        payload = torch.empty(int(size), dtype=torch.uint8, device=device)
    dist.broadcast(payload, src=0)
    return bytes(payload.cpu().tolist()).decode()
