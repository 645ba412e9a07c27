"""Test-set bits per dimension of a trained TARFlow with uniform dequantisation.

References:
    Theis, van den Oord, Bethge. A note on the evaluation of generative models.
    arXiv:1511.01844, 2015 (uniform dequantisation gives an upper bound on the discrete NLL).
    Zhai, et al. Normalizing Flows are Capable Generative Models (TARFlow). arXiv:2412.06329.

bits/dim = (-log p(x) / D + ln 128) / ln 2 with x = 2 (x_int + u) / 256 - 1, u ~ U[0, 1)^D: the
ln 128 is the log-Jacobian per dimension from [0, 256) to [-1, 1). Averaged over the test split
of the checkpoint's own dataset and ``--dequant-samples`` draws of u. A model trained with
Gaussian noise augmentation (sigma > 0) is scored on uniform noise here: still a valid bound,
but looser than for a model trained with ``dequantization: uniform``.

    python benchmarks/bits_per_dim.py                      # the shipped digits model
    python benchmarks/bits_per_dim.py --checkpoint runs/digits_tarflow --split test
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sample  # noqa: E402
from flows import data as flow_data  # noqa: E402
from flows.image import TransformerFlow  # noqa: E402
from trainers.checkpoint import resolve_checkpoint  # noqa: E402

DATASETS = {"digits": flow_data.digits, "lfw_faces": flow_data.lfw_faces,
            "image_folder": flow_data.image_folder}  # fmt: skip


@torch.no_grad()
def evaluate(
    model: TransformerFlow, dataset, batch_size: int = 256, dequant_samples: int = 4, seed: int = 0
) -> float:
    """Mean bits/dim over ``dataset`` (items {"x", "y"}) and dequantisation draws."""
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    total, count = 0.0, 0
    for batch in loader:
        y = batch.get("y") if model.config.num_classes else None
        for _ in range(dequant_samples):
            total += model.bits_per_dim(batch["x"], y).sum().item()
            count += len(batch["x"])
    return total / count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", type=Path, default=ROOT / "flows" / "pretrained" / "digits_tarflow"
    )
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument("--dequant-samples", type=int, default=4)
    args = parser.parse_args(argv)  # fmt: skip

    folder = resolve_checkpoint(args.checkpoint, require_trainer_state=False)
    config = sample.read_config(folder)
    weights = folder / "ema" if (folder / "ema").is_dir() else folder / "model"
    model = TransformerFlow.from_pretrained(str(weights)).eval()
    data_cfg = {k: v for k, v in config["data"].items()
                if k not in ("name", "batch_size", "num_workers", "shuffle")}  # fmt: skip
    dataset = DATASETS[config["data"]["name"]](split=args.split, **data_cfg)
    bpd = evaluate(model, dataset, dequant_samples=args.dequant_samples)
    summary = {"checkpoint": str(folder), "split": args.split, "images": len(dataset),
               "dequant_samples": args.dequant_samples, "bits_per_dim": round(bpd, 4)}  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
