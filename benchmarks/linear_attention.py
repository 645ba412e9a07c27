"""Softmax vs norm-aware linear attention (NaLa, arXiv:2506.21137): time against sequence length.

Prints, side by side in one run, the causal forward time of one attention layer
(``ATTENTIONS["softmax"]`` through SDPA vs ``ATTENTIONS["nala"]``) and the time to decode the
last of n tokens one at a time (softmax with a KVCache vs NaLa with a RecurrentStateCache,
whose per-token cost does not grow with the prefix).

    python benchmarks/linear_attention.py --width 256 --num-heads 4 --lengths 256 1024 4096
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from norms.linear_attention import RecurrentStateCache
from norms.transformer import ATTENTIONS, KVCache


def _seconds(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.width % args.num_heads or min(args.lengths) < 2:
        print(
            f"error: width {args.width} must be divisible by num_heads {args.num_heads} and "
            f"lengths >= 2",
            file=sys.stderr,
        )
        return 2
    layers = {name: ATTENTIONS[name](args.width, args.num_heads).eval()
              for name in ("softmax", "nala")}
    print(
        f"{'n':>6} {'softmax fwd ms':>15} {'nala fwd ms':>12} {'softmax step ms':>16} "
        f"{'nala step ms':>13}"
    )
    for n in args.lengths:
        x = torch.randn(args.batch, n, args.width)
        forward = {k: _seconds(lambda a=a, x=x: a(x), args.repeats) for k, a in layers.items()}
        step = {}
        for name, cache in (("softmax", KVCache()), ("nala", RecurrentStateCache(1))):
            layers[name](x[:, :-1], cache=cache)
            prefix = cache.length

            def decode(a=layers[name], c=cache, p=prefix, x=x) -> None:
                c.truncate(p)
                a(x[:, -1:], cache=c)

            step[name] = _seconds(decode, args.repeats)
        print(
            f"{n:>6} {1e3 * forward['softmax']:>15.2f} {1e3 * forward['nala']:>12.2f} "
            f"{1e3 * step['softmax']:>16.3f} {1e3 * step['nala']:>13.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
