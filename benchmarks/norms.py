"""Speed of every registered norm on CPU, relative to torch's LayerNorm / GroupNorm.

Token norms run at (32, 256, 512) against ``torch.nn.LayerNorm(512)``; map norms at
(32, 128, 32, 32) against ``torch.nn.GroupNorm(32, 128)``. Each row is the median of
forward+backward times, with all candidates of a table interleaved inside every repeat so that
load from other processes hits them alike; only the ratios are meaningful on a shared machine.
A last table times the eval-mode forward of PowerNorm / UnifiedNorm (a fused per-channel affine)
against a plain ``torch.addcmul`` affine.

Targets (from the issue): RMSNorm and CRMSNorm <= 1.2x LayerNorm, every other layer <= 3x,
eval-mode PowerNorm / UN as fast as a plain affine (<= 1.1x here, to absorb timer noise).

    PYTHONPATH=. python benchmarks/norms.py            # ~1-2 minutes on one core
    PYTHONPATH=. python benchmarks/norms.py --quick    # fewer repeats, ~30 s
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# norms package: put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
import norms  # noqa: E402

TOKEN_SHAPE = (32, 256, 512)
MAP_SHAPE = (32, 128, 32, 32)
TIGHT = {"rmsnorm": 1.2, "crmsnorm": 1.2}


def _fwd_bwd(layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dy: torch.Tensor):
    def run() -> None:
        x.grad = None
        layer(x).backward(dy)

    return run


def _fwd(layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor):
    def run() -> None:
        with torch.no_grad():
            layer(x)

    return run


def _time_interleaved(cases: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    for run in cases.values():  # warm-up (allocator, lazy init)
        run()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


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


def _rows(title: str, baseline: str, medians: dict[str, float], target: Callable[[str], float]):
    base = medians[baseline]
    lines = [f"\n{title}", f"{'layer':<28}{'median ms':>10}{'ratio':>8}{'target':>8}  ok"]
    for name, t in medians.items():
        if name == baseline:
            lines.append(f"{name:<28}{1e3 * t:>10.2f}{1.0:>8.2f}{'-':>8}  (baseline)")
            continue
        ratio, goal = t / base, target(name)
        verdict = "yes" if ratio <= goal else "NO"
        lines.append(f"{name:<28}{1e3 * t:>10.2f}{ratio:>8.2f}{goal:>8.1f}  {verdict}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per layer")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 15)
    if repeats < 1 or args.threads < 1:
        print(f"error: --repeats and --threads must be >= 1; got {repeats}, {args.threads}",
              file=sys.stderr)  # fmt: skip
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = [f"torch {torch.__version__}, {args.threads} thread(s), median of {repeats} repeats"]

    x = torch.randn(TOKEN_SHAPE, requires_grad=True)
    dy = torch.randn(TOKEN_SHAPE)
    cases = {"torch.nn.LayerNorm": _fwd_bwd(nn.LayerNorm(TOKEN_SHAPE[-1]), x, dy)}
    for name in norms.available_norms("tokens"):
        label = name + (" (frozen)" if name == "fake_layernorm" else "")
        cases[label] = _fwd_bwd(_token_layer(name), x, dy)
    medians = _time_interleaved(cases, repeats)
    out += _rows(
        f"token norms, forward+backward, x {TOKEN_SHAPE} (train mode)", "torch.nn.LayerNorm",
        medians, lambda n: TIGHT.get(n, 3.0),
    )  # fmt: skip
    del cases

    xm = torch.randn(MAP_SHAPE, requires_grad=True)
    dym = torch.randn(MAP_SHAPE)
    mask = (torch.rand(MAP_SHAPE[0], 1, *MAP_SHAPE[2:]) > 0.5).float()
    cases = {"torch.nn.GroupNorm(32)": _fwd_bwd(nn.GroupNorm(32, MAP_SHAPE[1]), xm, dym)}
    for name in norms.available_norms("maps"):
        label = name + (" (random mask)" if name == "regionnorm_b" else "")
        cases[label] = _fwd_bwd(_map_layer(name, mask), xm, dym)
    medians = _time_interleaved(cases, repeats)
    out += _rows(
        f"map norms, forward+backward, x {MAP_SHAPE} (train mode)", "torch.nn.GroupNorm(32)",
        medians, lambda n: 3.0,
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
    medians = _time_interleaved(cases, repeats)
    out += _rows(
        f"eval-mode forward, x {TOKEN_SHAPE}", "plain affine (addcmul)", medians,
        lambda n: 1.1 if "(eval)" in n and "LayerNorm" not in n else float("inf"),
    )  # fmt: skip
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
