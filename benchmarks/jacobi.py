"""Sequential vs Jacobi inversion of a trained TARFlow, side by side, plus training throughput.

References:
    Zhai, et al. Normalizing Flows are Capable Generative Models (TARFlow). arXiv:2412.06329.
    Zhang, et al. Accelerate TarFlow Sampling with GS-Jacobi Iteration. arXiv:2505.12849.

For each batch size: median wall time (interleaved repeats) of ``ImageFlowSampler.reverse``
with method="sequential", "jacobi" and "auto" (one sampler each, so auto's planner learns over
the repeats), Jacobi passes per block, max |x_jacobi - x_seq|, and
a straightforward KV-cache decoder written here from the same weights (torch.cat caches, plain
softmax attention) as the reference for the sequential path. Then training images/s of the
flow next to a plain causal ``torch.nn.TransformerEncoderLayer`` stack of the same size.

    python benchmarks/jacobi.py                     # the shipped model, CPU float32
    python benchmarks/jacobi.py --checkpoint runs/digits_tarflow --batches 1 4 --repeats 5
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.checks import require_device  # noqa: E402
from core.cli import DEVICES, ArgumentParser, positive_int, run_cli  # noqa: E402
from flows.autoregressive import AutoregressiveBlock  # noqa: E402
from flows.image import TransformerFlow, patchify, unpatchify  # noqa: E402
from flows.jacobi import DEFAULT_JACOBI_THRESHOLD  # noqa: E402
from flows.sampling import ImageFlowSampler  # noqa: E402


def load(checkpoint: Path) -> TransformerFlow:
    from trainers.checkpoint import resolve_checkpoint

    folder = resolve_checkpoint(checkpoint, require_trainer_state=False)
    weights = folder / "ema" if (folder / "ema").is_dir() else folder / "model"
    return TransformerFlow.from_pretrained(str(weights)).eval()


# ---------------------------------------------------------------- a plain KV-cache decoder
@torch.no_grad()
def plain_block_decode(block: AutoregressiveBlock, zp: torch.Tensor, prefix: torch.Tensor | None):
    """Invert one pre-norm LayerNorm/GELU block token by token with concatenated K/V caches."""
    b, t, _ = zp.shape
    layers = block.transformer.blocks
    keys: list[torch.Tensor | None] = [None] * len(layers)
    values: list[torch.Tensor | None] = [None] * len(layers)

    def step(h: torch.Tensor) -> torch.Tensor:  # h: (B, 1, W) at the next position
        for i, layer in enumerate(layers):
            attn = layer.attn
            q, k, v = attn.qkv(layer.norm1(h)).view(b, 1, 3, attn.num_heads, -1).unbind(2)
            q, k, v = (u.transpose(1, 2) for u in (q, k, v))
            keys[i] = k if keys[i] is None else torch.cat([keys[i], k], dim=2)
            values[i] = v if values[i] is None else torch.cat([values[i], v], dim=2)
            weights = (q @ keys[i].transpose(-1, -2) / attn.head_dim**0.5).softmax(-1)
            h = h + attn.proj((weights @ values[i]).transpose(1, 2).reshape(b, 1, -1))
            h = h + layer.mlp.fc2(F.gelu(layer.mlp.fc1(layer.norm2(h))))
        a, mu = block.out(block.transformer.final_norm(h)).chunk(2, dim=-1)
        return a, mu

    x = torch.empty_like(zp)
    pos = block.pos[0]
    if prefix is None:
        x[:, 0] = zp[:, 0]
        first, h = 1, block.embed(x[:, :1]) + pos[0]
    else:
        first, h = 0, prefix + pos[0]
    offset = 1 - first
    for i in range(first, t):
        a, mu = step(h)
        x[:, i : i + 1] = mu + torch.exp(a) * zp[:, i : i + 1]
        h = block.embed(x[:, i : i + 1]) + pos[i + offset]
    return x


@torch.no_grad()
def plain_reverse(model: TransformerFlow, z: torch.Tensor, y: torch.Tensor | None):
    tokens = patchify(z, model.config.patch_size)
    for i in reversed(range(len(model.blocks))):
        block = model.blocks[i]
        prefix = model._prefix(i, y, z.shape[0])
        zp = block.permutation.forward(tokens)
        tokens = block.permutation.inverse(plain_block_decode(block, zp, prefix))
    return unpatchify(tokens, model.channels, model.grid_size, model.config.patch_size)


def check_plain_supported(model: TransformerFlow) -> bool:
    c = model.config
    return (c.norm, c.norm_placement, c.positions, c.affine, c.start_token, c.activation) == (
        "layernorm", "pre", "learned", "exp", False, "gelu"
    )  # fmt: skip


# ---------------------------------------------------------------- sampling table
def median_times(fns: dict, repeats: int, cpu: dict | None = None) -> dict[str, float]:
    """Median wall seconds per function, repeats interleaved so load changes hit all alike.

    ``cpu``, when given, receives the median process CPU seconds too (less disturbed by other
    jobs on a shared machine when torch runs one thread).
    """
    for fn in fns.values():
        fn()  # warm-up (and the auto rule's one-off calibration)
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu_times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - start_cpu)
    if cpu is not None:
        cpu.update({name: statistics.median(ts) for name, ts in cpu_times.items()})
    return {name: statistics.median(ts) for name, ts in times.items()}


def sampling_table(model, batches, repeats, threshold, device) -> list[dict]:
    rows = []
    plain_ok = check_plain_supported(model)
    for batch in batches:
        gen = torch.Generator().manual_seed(batch)
        z = torch.randn((batch, *model.sample_shape), generator=gen).to(device)
        y = (
            torch.arange(batch, device=device) % model.config.num_classes
            if model.config.num_classes
            else None
        )
        samplers = {
            method: ImageFlowSampler(model, method, jacobi_threshold=threshold)
            for method in ("sequential", "jacobi", "auto")
        }
        seq, _ = samplers["sequential"].reverse(z, y)
        jac, info = samplers["jacobi"].reverse(z, y)
        fns = {
            method: lambda z=z, y=y, sampler=sampler: sampler.reverse(z, y)
            for method, sampler in samplers.items()
        }
        if plain_ok:
            fns["plain_kv"] = lambda z=z, y=y: plain_reverse(model, z, y)
        cpu: dict[str, float] = {}
        t = median_times(fns, repeats, cpu)
        _, auto_info = samplers["auto"].reverse(z, y)
        best = min(t["sequential"], t["jacobi"])
        row = {
            "batch": batch,
            "sequential_s": t["sequential"],
            "jacobi_s": t["jacobi"],
            "speedup": t["sequential"] / t["jacobi"],
            "speedup_cpu_time": cpu["sequential"] / cpu["jacobi"],
            "jacobi_passes": info["iterations"],
            "jacobi_token_passes": info["token_passes"],
            "max_abs_diff": (jac - seq).abs().max().item(),
            "auto_method": auto_info["method"],
            "auto_s": t["auto"],
            "auto_over_best": t["auto"] / best,
        }
        if plain_ok:
            row["plain_kv_s"] = t["plain_kv"]
            row["sequential_over_plain"] = t["sequential"] / t["plain_kv"]
            row["plain_max_abs_diff"] = (plain_reverse(model, z, y) - seq).abs().max().item()
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def threshold_table(model, thresholds, batch, repeats, device, guidance=0.0) -> list[dict]:
    """Jacobi at each threshold against sequential on the same noise: accuracy and speed."""
    gen = torch.Generator().manual_seed(batch)
    z = torch.randn((batch, *model.sample_shape), generator=gen).to(device)
    classes = model.config.num_classes
    y = torch.arange(batch, device=device) % classes if classes else None
    samplers = {"sequential": ImageFlowSampler(model, "sequential")}
    samplers.update({t: ImageFlowSampler(model, "jacobi", jacobi_threshold=t) for t in thresholds})
    outputs = {name: sampler.reverse(z, y, guidance) for name, sampler in samplers.items()}
    fns = {name: lambda s=sampler: s.reverse(z, y, guidance) for name, sampler in samplers.items()}
    t = median_times(fns, repeats)
    seq = outputs["sequential"][0]
    rows = []
    for threshold in thresholds:
        x, info = outputs[threshold]
        rows.append({
            "threshold": threshold, "batch": batch, "guidance": guidance,
            "passes": info["iterations"], "token_passes": sum(info["token_passes"]),
            "max_abs_diff": (x - seq).abs().max().item(), "jacobi_s": t[threshold],
            "speedup": t["sequential"] / t[threshold],
        })  # fmt: skip
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------- training throughput
class PlainReference(nn.Module):
    """Same width/heads/layers/tokens: linear in, causal nn.TransformerEncoder, linear out."""

    def __init__(self, model: TransformerFlow) -> None:
        super().__init__()
        c = model.config
        layer = nn.TransformerEncoderLayer(
            c.width, c.num_heads, int(c.width * c.mlp_ratio), dropout=0.0,
            activation="gelu", batch_first=True, norm_first=True,
        )  # fmt: skip
        self.embed = nn.Linear(model.token_dim, c.width)
        self.encoder = nn.TransformerEncoder(
            layer, sum(c.layers_per_block), enable_nested_tensor=False
        )
        self.out = nn.Linear(c.width, 2 * model.token_dim)
        self.patch, self.t = c.patch_size, model.num_tokens

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        tokens = patchify(x, self.patch)
        mask = nn.Transformer.generate_square_subsequent_mask(self.t, dtype=x.dtype)
        h = self.encoder(self.embed(tokens), mask=mask, is_causal=True)
        a, mu = self.out(h).chunk(2, -1)
        return (0.5 * ((tokens - mu) * torch.exp(-a)).pow(2) + a).mean()


def training_throughput(model: TransformerFlow, batch: int, steps: int) -> dict:
    flow = TransformerFlow.from_config(model.config).train()
    plain = PlainReference(model).train()
    x = torch.rand(batch, *model.image_shape) * 2 - 1
    y = torch.arange(batch) % max(model.config.num_classes, 1)
    opt_flow = torch.optim.AdamW(flow.parameters(), lr=1e-4)
    opt_plain = torch.optim.AdamW(plain.parameters(), lr=1e-4)

    def flow_step() -> None:
        loss = flow.loss({"x": x, "y": y})["loss"]
        opt_flow.zero_grad()
        loss.backward()
        opt_flow.step()

    def plain_step() -> None:
        loss = plain.loss(x)
        opt_plain.zero_grad()
        loss.backward()
        opt_plain.step()

    t = median_times({"flow": flow_step, "plain": plain_step}, steps)
    return {
        "batch": batch,
        "flow_images_per_s": batch / t["flow"],
        "plain_images_per_s": batch / t["plain"],
        "flow_over_plain_time": t["flow"] / t["plain"],
        "flow_params": sum(p.numel() for p in flow.parameters()),
        "plain_params": sum(p.numel() for p in plain.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, argv)


def _run(argv: list[str] | None) -> None:
    parser = ArgumentParser(prog="python benchmarks/jacobi.py",
                            description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", type=Path, default=ROOT / "flows" / "pretrained" / "digits_tarflow"
    )
    parser.add_argument("--batches", type=positive_int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--threshold", type=float, default=DEFAULT_JACOBI_THRESHOLD)
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    parser.add_argument("--train-batch", type=positive_int, default=64)
    parser.add_argument("--train-steps", type=positive_int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--thresholds", type=float, nargs="*", default=[],
                        help="also sweep these Jacobi thresholds (at the first batch size)")
    parser.add_argument("--guidance", type=float, default=0.0, help="guidance of the sweep")
    parser.add_argument("--no-training", action="store_true", help="skip the training table")
    args = parser.parse_args(argv)  # fmt: skip
    require_device(args.device)

    model = load(args.checkpoint).to(args.device)
    print(f"model: {args.checkpoint} | {len(model.blocks)} blocks {model.config.layers_per_block}, "
          f"{model.num_tokens} tokens x {model.token_dim} dims, width {model.config.width} | "
          f"device {args.device}, float32, torch threads {torch.get_num_threads()}, "
          f"threshold {args.threshold}")  # fmt: skip
    rows = sampling_table(model, args.batches, args.repeats, args.threshold, args.device)
    print("| batch | sequential s | jacobi s | speed-up | speed-up (CPU time) "
          "| jacobi passes/block | max abs diff | auto picks | auto / best "
          "| sequential / plain KV decoder |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        plain = f"{r['sequential_over_plain']:.2f}" if "sequential_over_plain" in r else "n/a"
        print(f"| {r['batch']} | {r['sequential_s']:.3f} | {r['jacobi_s']:.3f} | "
              f"{r['speedup']:.2f}x | {r['speedup_cpu_time']:.2f}x | {r['jacobi_passes']} | "
              f"{r['max_abs_diff']:.1e} | {r['auto_method']} | {r['auto_over_best']:.2f} | "
              f"{plain} |")  # fmt: skip
    results: dict = {"sampling": rows}
    if args.thresholds:
        sweep = threshold_table(model, args.thresholds, args.batches[0], args.repeats,
                                args.device, args.guidance)  # fmt: skip
        print(f"\nthreshold sweep, batch {args.batches[0]}, guidance {args.guidance}:")
        print("| threshold | passes/block | token-passes | max abs diff | jacobi s | speed-up |")
        print("|---|---|---|---|---|---|")
        for r in sweep:
            print(f"| {r['threshold']:.0e} | {r['passes']} | {r['token_passes']} | "
                  f"{r['max_abs_diff']:.1e} | {r['jacobi_s']:.3f} | {r['speedup']:.2f}x |")
        results["thresholds"] = sweep
    if not args.no_training:
        train = training_throughput(model, args.train_batch, args.train_steps)
        print(f"training (batch {train['batch']}): flow {train['flow_images_per_s']:.0f} "
              f"images/s, plain TransformerEncoderLayer reference "
              f"{train['plain_images_per_s']:.0f} images/s, flow step time / reference = "
              f"{train['flow_over_plain_time']:.2f} ({train['flow_params']} vs "
              f"{train['plain_params']} parameters)")
        results["training"] = train
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())
