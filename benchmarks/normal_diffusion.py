"""Benchmark: normal-map diffusion with GroupNorm vs other map norms, and normal alignment.

References:
    Huang, Huang, Chen, Xu, Guo. HumanNorm: Learning Normal Diffusion Model for High-quality and
        Realistic 3D Human Generation. CVPR 2024, arXiv:2310.01406.

Normal-adapted: one model per norm, trained for the same steps on the same batches; steps are
interleaved (one step of each model in turn) so the time ratios see the same machine load.
Reported per norm: final training loss (mean of the last 10% of steps), time per step relative
to GroupNorm, and for label-conditioned DDIM samples: mean | ||n|| - 1 | before
renormalisation, fraction of back-facing foreground normals, and the view-bucket accuracy of the
CNN probe of ``diffusion.metrics`` trained on rendered maps (its accuracy on held-out renders is
printed as a ceiling).

Normal-aligned: a concat-conditioned image model trained the same way; the correlation between
the luminance of its samples and the Lambertian shading max(n.l, 0) of the conditioning normals
(the renderer's light), against unconditioned samples (null condition) of the same model and
against the renderer's own colour images.

    python benchmarks/normal_diffusion.py            # default, a few CPU minutes
    python benchmarks/normal_diffusion.py --quick    # smoke run, under a minute
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import default_collate
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion.data import NormalMapDataset  # noqa: E402
from diffusion.metrics import clean_normal_maps, probe_accuracy, train_view_probe  # noqa: E402
from diffusion.models import NormalAdaptedDiffusion, NormalAlignedDiffusion  # noqa: E402
from diffusion.normal_maps import normal_quality, shading_correlation  # noqa: E402
from diffusion.pipelines import sample_aligned_images, sample_normal_maps  # noqa: E402
from diffusion.render import FRAMINGS, light_direction  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--norms", default="groupnorm,evonorm_s0,batchnorm")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench/normal_diffusion.json")
    args = parser.parse_args(argv)
    steps = args.steps or (20 if args.quick else 200)
    num_train = 128 if args.quick else 512
    num_samples, sample_steps = (12, 10) if args.quick else (48, 20)
    res = args.resolution
    norm_names = args.norms.split(",")
    arch = dict(resolution=res, block_out_channels=(16, 32), norm_num_groups=8)

    t0 = time.perf_counter()
    train = NormalMapDataset(res, num_samples=num_train, seed=args.seed)
    test = NormalMapDataset(res, num_samples=num_samples * 2, seed=args.seed + 1000, flip=False)
    render_s = time.perf_counter() - t0
    print(f"rendered {num_train + len(test)} maps at {res}x{res} in {render_s:.1f} s")

    probe = train_view_probe(train.data["x"], train.data["view"], train.data["framing"],
                             steps=60 if args.quick else 250, seed=args.seed)
    clf_acc_renders = probe_accuracy(probe, test.data["x"], test.data["view"],
                                     test.data["framing"])["view"]
    print(f"view probe accuracy on held-out renders: {clf_acc_renders:.3f}")

    torch.manual_seed(args.seed)
    models = {}
    for name in norm_names:
        torch.manual_seed(args.seed)
        models[name] = NormalAdaptedDiffusion(**arch, norm=name)
    torch.manual_seed(args.seed)
    models["aligned"] = NormalAlignedDiffusion(**arch, conditioning="concat")
    opts = {k: torch.optim.AdamW(m.parameters(), lr=2e-3, weight_decay=0.0)
            for k, m in models.items()}
    losses: dict[str, list[float]] = {k: [] for k in models}
    times: dict[str, list[float]] = {k: [] for k in models}
    gen = torch.Generator().manual_seed(args.seed)
    for step in tqdm(range(steps), desc="training (interleaved)"):
        idx = torch.randint(len(train), (args.batch_size,), generator=gen).tolist()
        batch = default_collate([train[i] for i in idx])
        for key, model in models.items():
            torch.manual_seed(args.seed * 100003 + step)  # same noise / timesteps per model
            start = time.perf_counter()
            loss = model.loss(batch)["loss"]
            opts[key].zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opts[key].step()
            times[key].append(time.perf_counter() - start)
            losses[key].append(loss.item())

    tail = max(1, steps // 10)
    skip = min(5, steps // 4)  # first steps carry allocation warm-up
    per_step = {k: sum(v[skip:]) / len(v[skip:]) for k, v in times.items()}
    rows = []
    labels = torch.arange(num_samples) % (4 * len(FRAMINGS))
    for name in norm_names:
        x = sample_normal_maps(models[name], labels, torch.Generator().manual_seed(args.seed),
                               steps=sample_steps, guidance_scale=2.0)
        quality = normal_quality(x)
        clean, _ = clean_normal_maps(x)
        views, framings = labels // len(FRAMINGS), labels % len(FRAMINGS)
        acc = probe_accuracy(probe, clean, views, framings)["view"]
        rows.append({
            "norm": name, "final_loss": sum(losses[name][-tail:]) / tail,
            "time_per_step_s": per_step[name],
            "time_vs_groupnorm": per_step[name] / per_step.get("groupnorm", per_step[name]),
            "norm_error": quality["norm_error"], "back_facing": quality["back_facing"],
            "foreground": quality["foreground"], "view_accuracy": acc,
        })

    reference = normal_quality(test.data["x"][:num_samples], test.data["mask"][:num_samples])

    aligned = models["aligned"]
    cond = test.data["x"][:num_samples]
    mask = test.data["mask"][:num_samples]
    unit = torch.where(mask.unsqueeze(1), cond, torch.zeros_like(cond))
    light = light_direction(torch.float32)
    guided = sample_aligned_images(aligned, cond, torch.Generator().manual_seed(args.seed),
                                   steps=sample_steps, guidance_scale=2.0)
    uncond = sample_aligned_images(aligned, torch.zeros_like(cond),
                                   torch.Generator().manual_seed(args.seed),
                                   steps=sample_steps, guidance_scale=1.0)
    alignment = {
        "final_loss": sum(losses["aligned"][-tail:]) / tail,
        "corr_conditioned": shading_correlation(guided, unit, mask, light),
        "corr_unconditioned": shading_correlation(uncond, unit, mask, light),
        "corr_rendered_colour": shading_correlation(test.data["color"][:num_samples], unit,
                                                    mask, light),
    }

    print(f"\nnormal-adapted, {steps} steps, batch {args.batch_size}, {res}x{res}, "
          f"{num_samples} samples ({sample_steps} DDIM steps, guidance 2)")
    print("| norm | final loss | time/step vs GroupNorm | mean abs(norm-1) | back-facing | "
          "foreground | view acc. |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['norm']} | {r['final_loss']:.4f} | {r['time_vs_groupnorm']:.2f}x "
              f"({1000 * r['time_per_step_s']:.0f} ms) | {r['norm_error']:.3f} | "
              f"{r['back_facing']:.3f} | {r['foreground']:.3f} | {r['view_accuracy']:.3f} |")
    print(f"| rendered maps (reference) | - | - | {reference['norm_error']:.3f} | "
          f"{reference['back_facing']:.3f} | {reference['foreground']:.3f} | "
          f"{clf_acc_renders:.3f} |")
    print(f"\nnormal-aligned (concat), final loss {alignment['final_loss']:.4f}: "
          f"corr(luminance, n.l) conditioned {alignment['corr_conditioned']:.3f}, "
          f"unconditioned {alignment['corr_unconditioned']:.3f}, "
          f"rendered colour {alignment['corr_rendered_colour']:.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "steps": steps, "batch_size": args.batch_size, "resolution": res,
        "num_samples": num_samples, "sample_steps": sample_steps,
        "classifier_accuracy_renders": clf_acc_renders, "adapted": rows,
        "rendered_reference": reference,
        "aligned": alignment, "render_seconds": render_s,
    }, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
