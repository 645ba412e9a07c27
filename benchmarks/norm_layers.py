"""Speed of every registered norm on CPU, relative to torch's LayerNorm / GroupNorm.

Token norms run at (32, 256, 512) against ``torch.nn.LayerNorm(512)``; map norms at
(32, 128, 32, 32) against ``torch.nn.GroupNorm(32, 128)``. Each row is the median of
forward+backward times, with all candidates of a table interleaved inside every repeat so that
load from other processes hits them alike; only the ratios are meaningful on a shared machine.
Times are the CPU time of the benchmarking thread (``time.thread_time``, torch on 1 thread by
default), so time slices lost to other processes do not count; ``--wall`` uses wall-clock time.
Each row shows the median and the fastest repeat with their ratios to the baseline's, and the
paired ratio: the median over repeats of the row's time over the baseline's time in the same
repeat. The verdict uses the paired ratio, which a burst of load slowing one repeat moves least.
A last table times the eval-mode forward of PowerNorm / UnifiedNorm (a fused per-channel affine)
against a plain ``torch.addcmul`` affine.

``--compiled`` adds a "(compiled)" row for every layer with compiled kernels
(:mod:`norms.fusion`), interleaved with the eager rows; each such row switches compiled kernels
on for its own calls only, and the header lists how long each took to compile (its first call).
Two rows without a target show what RegionNorm-L spends outside the normalization: its 7x7
convolutions (mask, gamma and beta) and its channel mean/max features, forward and backward.

Every fresh full-size buffer costs page faults: glibc serves blocks this large with mmap and
unmaps them when freed, so each new 16 MB tensor is faulted in again (about 1-15 ms on the shared
2-core machine, depending on its load), for the baselines as for the norms. ``--keep-freed-memory``
asks glibc (mallopt) to keep freed blocks of up to 32 MB for reuse instead, which leaves the
arithmetic and memory passes: run both to see how much of a ratio is allocation.

Targets (from the issue): RMSNorm and CRMSNorm <= 1.2x LayerNorm, every other layer <= 3x,
eval-mode PowerNorm / UN as fast as a plain affine (<= 1.1x here, to absorb timer noise).

    python benchmarks/norm_layers.py               # ~1-2 minutes on one core
    python benchmarks/norm_layers.py --quick       # fewer repeats, ~30 s
    python benchmarks/norm_layers.py --compiled    # plus compiled kernels (minutes to compile)
    python benchmarks/norm_layers.py --keep-freed-memory   # without fresh-buffer page faults
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

import norms
from norms.region import _ChannelMeanMax

TOKEN_SHAPE = (32, 256, 512)
MAP_SHAPE = (32, 128, 32, 32)
TIGHT = {"rmsnorm": 1.2, "crmsnorm": 1.2}
COMPILED = ("rmsnorm", "crmsnorm", "evonorm_b0", "evonorm_s0", "regionnorm_b", "regionnorm_l")


def _keep_freed_memory() -> None:
    """glibc keeps freed blocks of up to 32 MB for reuse (no unmapping, no trimming)."""
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter numbers (malloc.h)
    if not (libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 2**31 - 1)):
        raise OSError("mallopt refused the thresholds")


def _fwd_bwd(layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dy: torch.Tensor):
    def run() -> None:
        x.grad = None
        layer(x).backward(dy)

    return run


def _compiled(run: Callable[[], None], compile_seconds: dict[str, float], label: str):
    """``run`` with compiled kernels switched on for its own calls; the first call's wall time
    (the compilation) is recorded under ``label``."""

    def compiled_run() -> None:
        norms.use_compiled_kernels(True)
        try:
            if label not in compile_seconds:
                start = time.perf_counter()
                run()
                compile_seconds[label] = time.perf_counter() - start
            else:
                run()
        finally:
            norms.use_compiled_kernels(False)

    return compiled_run


def _fwd(layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor):
    def run() -> None:
        with torch.no_grad():
            layer(x)

    return run


CLOCK = time.thread_time


def _time_interleaved(cases: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Seconds per case and repeat; every repeat runs all cases once, in a shuffled order
    (whichever case runs first after the others' buffers are freed pays extra page faults)."""
    for run in cases.values():  # warm-up (allocator, lazy init)
        run()
    times: dict[str, list[float]] = {name: [] for name in cases}
    order = list(cases.items())
    shuffler = random.Random(0)
    for _ in range(repeats):
        shuffler.shuffle(order)
        for name, run in order:
            start = CLOCK()
            run()
            times[name].append(CLOCK() - start)
    return times


def _token_layer(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    layer = norms.build_norm(name, TOKEN_SHAPE[-1])
    if name == "fake_layernorm":  # the state it is fine-tuned in
        layer.start_calibration()
        with torch.no_grad():
            layer(torch.randn(8, TOKEN_SHAPE[-1]))
        layer.freeze()
    return layer


def _map_layer(name: str, mask: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    layer = norms.build_norm(name, MAP_SHAPE[1])
    if name == "regionnorm_b":
        return lambda x: layer(x, mask=mask)
    return layer


def _regionnorm_l_parts(x: torch.Tensor) -> dict[str, Callable[[], None]]:
    """RegionNorm-L's work outside the normalization: its convolutions and its features."""
    layer = norms.build_norm("regionnorm_l", x.shape[1])
    spatial = (x.shape[0], 1, *x.shape[2:])
    soft = torch.rand(spatial, requires_grad=True)
    features = torch.randn(x.shape[0], 2, *x.shape[2:], requires_grad=True)
    grads = [torch.randn(spatial), torch.randn(spatial), torch.randn(spatial)]
    flat = x.detach().reshape(x.shape[0], x.shape[1], -1).requires_grad_()
    grad_features = torch.randn(x.shape[0], 2, flat.shape[2])

    def convs() -> None:
        layer.zero_grad(set_to_none=True)
        outputs = [layer.mask_conv(features), layer.gamma_conv(soft), layer.beta_conv(soft)]
        torch.autograd.backward(outputs, grads)

    def mean_max() -> None:
        flat.grad = None
        _ChannelMeanMax.apply(flat).backward(grad_features)

    return {"(part) regionnorm_l convs": convs, "(part) regionnorm_l mean/max": mean_max}


def _rows(
    title: str,
    baseline: str,
    times: dict[str, list[float]],
    target: Callable[[str], float | None],
) -> list[str]:
    """One line per case: median and min time, their ratios to the baseline's, and the paired
    ratio (the median over repeats of case time / baseline time in the same repeat), which the
    verdict uses: a burst of load that slows one repeat slows both sides of its ratio."""
    base = times[baseline]
    head = (
        f"{'layer':<28}{'median ms':>10}{'ratio':>7}{'min ms':>8}{'ratio':>7}{'paired':>8}"
        f"{'target':>7}  ok"
    )
    lines = [f"\n{title}", head]
    for name, t in times.items():
        median, fastest = statistics.median(t), min(t)
        paired = statistics.median(a / b for a, b in zip(t, base, strict=True))
        row = (
            f"{name:<28}{1e3 * median:>10.2f}{median / statistics.median(base):>7.2f}"
            f"{1e3 * fastest:>8.2f}{fastest / min(base):>7.2f}{paired:>8.2f}"
        )
        if name == baseline:
            lines.append(f"{row}{'-':>7}  (baseline)")
            continue
        goal = target(name)
        if goal is None:
            lines.append(f"{row}{'-':>7}")
            continue
        verdict = "yes" if paired <= goal else "NO"
        lines.append(f"{row}{goal:>7.1f}  {verdict}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per layer")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--wall", action="store_true", help="wall-clock instead of CPU time")
    parser.add_argument(
        "--compiled", action="store_true", help="add rows for the compiled kernels (norms.fusion)"
    )
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="glibc keeps freed blocks for reuse (mallopt): no page faults for fresh buffers",
    )
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.perf_counter if args.wall else time.thread_time
    repeats = args.repeats or (5 if args.quick else 21)
    if repeats < 1 or args.threads < 1:
        print(f"error: --repeats and --threads must be >= 1; got {repeats}, {args.threads}",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.keep_freed_memory:
        try:
            _keep_freed_memory()
        except (OSError, AttributeError) as error:
            print(f"error: --keep-freed-memory needs glibc's mallopt ({error})", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clock = "wall-clock" if args.wall else "thread CPU"
    allocator = "freed memory kept (mallopt)" if args.keep_freed_memory else "default allocator"
    out = [
        f"torch {torch.__version__}, {args.threads} thread(s), {clock} time, {allocator}, "
        f"{repeats} interleaved repeats",
        "load average (1, 5, 15 min) at the start: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()),
    ]
    compile_seconds: dict[str, float] = {}

    x = torch.randn(TOKEN_SHAPE, requires_grad=True)
    dy = torch.randn(TOKEN_SHAPE)
    cases = {"torch.nn.LayerNorm": _fwd_bwd(nn.LayerNorm(TOKEN_SHAPE[-1]), x, dy)}
    for name in norms.available_norms("tokens"):
        label = name + (" (frozen)" if name == "fake_layernorm" else "")
        cases[label] = _fwd_bwd(_token_layer(name), x, dy)
        if args.compiled and name in COMPILED:
            compiled = f"{name} (compiled)"
            run = _fwd_bwd(_token_layer(name), x, dy)
            cases[compiled] = _compiled(run, compile_seconds, compiled)
    times = _time_interleaved(cases, repeats)
    out += _rows(
        f"token norms, forward+backward, x {TOKEN_SHAPE} (train mode)", "torch.nn.LayerNorm",
        times, lambda n: TIGHT.get(n.split(" ")[0], 3.0),
    )  # fmt: skip
    del cases

    xm = torch.randn(MAP_SHAPE, requires_grad=True)
    dym = torch.randn(MAP_SHAPE)
    mask = (torch.rand(MAP_SHAPE[0], 1, *MAP_SHAPE[2:]) > 0.5).float()
    cases = {"torch.nn.GroupNorm(32)": _fwd_bwd(nn.GroupNorm(32, MAP_SHAPE[1]), xm, dym)}
    for name in norms.available_norms("maps"):
        label = name + (" (random mask)" if name == "regionnorm_b" else "")
        cases[label] = _fwd_bwd(_map_layer(name, mask), xm, dym)
        if args.compiled and name in COMPILED:
            compiled = f"{name} (compiled)"
            run = _fwd_bwd(_map_layer(name, mask), xm, dym)
            cases[compiled] = _compiled(run, compile_seconds, compiled)
    cases.update(_regionnorm_l_parts(xm))
    times = _time_interleaved(cases, repeats)
    out += _rows(
        f"map norms, forward+backward, x {MAP_SHAPE} (train mode)", "torch.nn.GroupNorm(32)",
        times, lambda n: None if n.startswith("(part)") else 3.0,
    )  # fmt: skip
    del cases

    weight, bias = torch.rand(TOKEN_SHAPE[-1]) + 0.5, torch.randn(TOKEN_SHAPE[-1])
    cases = {"plain affine (addcmul)": _fwd(lambda t: torch.addcmul(bias, t, weight), x)}
    for name in ("powernorm", "unifiednorm"):
        layer = norms.build_norm(name, TOKEN_SHAPE[-1])
        with torch.no_grad():
            layer(torch.randn(64, TOKEN_SHAPE[-1]))  # some running statistics
        cases[f"{name} (eval)"] = _fwd(layer.eval(), x)
    cases["torch.nn.LayerNorm (eval)"] = _fwd(nn.LayerNorm(TOKEN_SHAPE[-1]), x)
    times = _time_interleaved(cases, 3 * repeats)
    out += _rows(
        f"eval-mode forward, x {TOKEN_SHAPE}", "plain affine (addcmul)", times,
        lambda n: 1.1 if "(eval)" in n and "LayerNorm" not in n else None,
    )  # fmt: skip
    if compile_seconds:
        out.append("\ncompile time (first call, wall-clock s): " + ", ".join(
            f"{name} {seconds:.0f}" for name, seconds in compile_seconds.items()
        ))  # fmt: skip
    out.append("load average at the end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
