"""The one Accelerate trainer: ``python -m trainers.train --config configs/X.yaml [key=value ...]``.

Single process::

    python -m trainers.train --config configs/smoke.yaml trainer.max_steps=100

Data-parallel on one node (N GPUs), many nodes, FSDP2 (see configs/accelerate/)::

    accelerate launch --multi_gpu --num_processes N -m trainers.train --config configs/X.yaml
    accelerate launch --config_file configs/accelerate/2node.yaml --machine_rank R \\
        --main_process_ip HOST -m trainers.train --config configs/X.yaml
    accelerate launch --config_file configs/accelerate/fsdp2.yaml -m trainers.train ...

The loop: gradient accumulation (``accelerator.accumulate``), clipping on the synchronising
micro-step, bf16/fp16 autocast, warm-up + cosine learning rate, EMA of weights and buffers,
the NaP projection after each step (``trainer.nap``), atomic checkpoints with exact resume,
JSON-lines metrics, TensorBoard, sample grids and a loss plot. A non-finite loss skips its step;
``trainer.max_nonfinite`` in a row stop the run with the last good checkpoint.

References: Gugger et al., Accelerate (https://github.com/huggingface/accelerate); Karpathy,
nanoGPT (https://github.com/karpathy/nanoGPT); Peebles & Xie, "Scalable Diffusion Models with
Transformers", arXiv:2212.09748 (EMA and training loop); Loshchilov & Hutter, "SGDR: Stochastic
Gradient Descent with Warm Restarts", arXiv:1608.03983 (cosine schedule); Lyle et al.,
"Normalization and effective learning rates in reinforcement learning", arXiv:2407.01800 (NaP).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from core.images import save_image_grid
from core.registry import get_dataset, get_model
from trainers import checkpoint as ckpt
from trainers.config import TrainConfig, TrainerConfig, load_config

__all__ = ["NonFiniteLossError", "TrainResult", "lr_factor", "main", "train"]


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses; the message names the last good checkpoint."""


@dataclass
class TrainResult:
    """What a finished run leaves: final step, newest checkpoint, logged metric records."""

    step: int
    checkpoint: Path | None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    nonfinite_steps: int = 0


# --------------------------------------------------------------------------- pieces


class EpochSampler(Sampler[int]):
    """A permutation fixed by ``(seed, epoch)``: the data order is a function of the position.

    The method is ``use_epoch`` rather than ``set_epoch`` on purpose: Accelerate calls
    ``set_epoch`` with its own iteration counter, which restarts at 0 after a resume.
    """

    def __init__(self, length: int, seed: int, shuffle: bool) -> None:
        self.length, self.seed, self.shuffle, self.epoch = length, seed, shuffle, 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.length))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


class LossModule(nn.Module):
    """Routes ``forward(batch)`` to ``model.loss(batch)`` so DDP/FSDP/autocast wrap the loss."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.model.loss(batch)


def lr_factor(step: int, config: TrainerConfig) -> float:
    """Multiplier of the base learning rate for optimizer step ``step`` (0-based)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return 1.0
    span = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if config.lr_schedule == "cosine" \
        else 1.0 - progress
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * shape


def _nap_projector_class() -> Any:
    try:
        from norms.nap import NaPProjector
    except ImportError as error:
        raise ValueError(
            f"trainer.nap=true needs norms.nap.NaPProjector, which cannot be imported ({error})"
        ) from None
    return NaPProjector


def preflight(config: TrainConfig) -> None:
    """Checks that need more than the config itself; raise before anything is written."""
    trainer = config.trainer
    if trainer.tensorboard:
        try:
            import tensorboard  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise ValueError(
                "trainer.tensorboard=true needs the tensorboard package, which is not installed "
                "(pip install tensorboard, or set trainer.tensorboard=false)"
            ) from None
    if trainer.nap:
        _nap_projector_class()
    if trainer.resume not in (None, "latest"):
        ckpt.resolve_checkpoint(trainer.resume)


def plot_losses(metrics_path: Path, out_path: Path) -> None:
    """Loss against step from metrics.jsonl -> PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    steps = [r["step"] for r in records if math.isfinite(r.get("loss", math.nan))]
    losses = [r["loss"] for r in records if math.isfinite(r.get("loss", math.nan))]
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


# --------------------------------------------------------------------------- checkpoints


def _save_model_folder(accelerator: Any, wrapper: nn.Module, model: nn.Module, path: Path) -> None:
    """save_pretrained of the trained weights (gathered first when they are sharded)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        state = accelerator.get_state_dict(wrapper)
        if accelerator.is_main_process:
            full = type(model).from_config(model.config)
            full.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
            full.save_pretrained(str(path))
    elif accelerator.is_main_process:
        model.save_pretrained(str(path))


def write_checkpoint_files(
    folder: Path, config: TrainConfig, state: dict[str, Any], model: nn.Module,
    ema: Any, accelerator: Any, wrapper: nn.Module,
) -> None:
    """Everything of one checkpoint into ``folder`` (the temporary one); state file last."""
    accelerator.save_state(str(folder / "accelerator"))
    _save_model_folder(accelerator, wrapper, model, folder / "model")
    if accelerator.is_main_process:
        if ema is not None:
            ema.model.save_pretrained(str(folder / "ema"))
        (folder / "config.yaml").write_text(config.to_yaml())
        (folder / ckpt.STATE_FILE).write_text(json.dumps(state, indent=1))


def save_checkpoint(
    output_dir: Path, config: TrainConfig, state: dict[str, Any], model: nn.Module,
    ema: Any, accelerator: Any, wrapper: nn.Module,
) -> Path:
    """Write ``checkpoint-<step>`` atomically (temporary folder + rename); keep the last K."""
    step = state["step"]
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f"{ckpt.TMP_PREFIX}{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    write_checkpoint_files(tmp, config, state, model, ema, accelerator, wrapper)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        ckpt.prune_checkpoints(output_dir, config.trainer.keep_last)
    accelerator.wait_for_everyone()
    return final


# --------------------------------------------------------------------------- the loop


def train(config: TrainConfig) -> TrainResult:
    """Run the training described by ``config`` (call under ``accelerate launch`` for DP)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from trainers.ema import EMA
    from trainers.optim import build_optimizer

    tc = config.trainer
    preflight(config)
    accelerator = Accelerator(
        gradient_accumulation_steps=tc.gradient_accumulation_steps,
        mixed_precision=tc.mixed_precision,
    )
    output_dir = Path(tc.output_dir)
    main_process = accelerator.is_main_process
    resume_from = None
    if tc.resume == "latest":
        resume_from = ckpt.latest_checkpoint(output_dir)
    elif tc.resume is not None:
        resume_from = ckpt.resolve_checkpoint(tc.resume)
    if main_process:
        print(f"resolved config:\n{config.to_yaml()}", flush=True)
        output_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale_temporaries(output_dir)
        if tc.resume == "latest" and resume_from is None:
            print(f"no checkpoint in {output_dir}: starting from step 0", flush=True)
        elif tc.resume is None and ckpt.find_checkpoints(output_dir):
            print(f"warning: {output_dir} already holds checkpoints; starting from step 0 "
                  "(trainer.resume=latest would continue them)", flush=True)
    accelerator.wait_for_everyone()

    # Same initial weights on every rank, then rank-specific randomness (noise, dropout).
    set_seed(tc.seed)
    model = get_model(config.model.name)(**config.model.kwargs)
    dataset = get_dataset(config.data.name)(**config.data.kwargs)
    sampler = EpochSampler(len(dataset), tc.seed, config.data.shuffle)
    loader = DataLoader(
        dataset, batch_size=config.data.batch_size, sampler=sampler, drop_last=tc.drop_last,
        num_workers=config.data.num_workers, generator=torch.Generator().manual_seed(tc.seed),
    )
    if len(loader) == 0:
        raise ValueError(
            f"data.batch_size={config.data.batch_size} is larger than the dataset "
            f"({len(dataset)} items) with trainer.drop_last=true"
        )
    optimizer = build_optimizer(model, config.optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tc))
    wrapper, optimizer, loader = accelerator.prepare(LossModule(model), optimizer, loader)
    model = accelerator.unwrap_model(wrapper).model
    ema = EMA(model, tc.ema_decay) if tc.ema_decay is not None else None
    # NaP targets are the initial norms: the projector is built before any step (and its
    # targets are restored on resume).
    projector = _nap_projector_class()(model) if tc.nap else None
    # The scheduler is stepped by hand once per optimizer step (not prepared: Accelerate would
    # step it once per process); it, the EMA and the NaP targets travel in the Accelerate state.
    accelerator.register_for_checkpointing(scheduler)
    for extra_state in (ema, projector):
        if extra_state is not None and hasattr(extra_state, "state_dict"):
            accelerator.register_for_checkpointing(extra_state)
    set_seed(tc.seed, device_specific=True)

    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "nonfinite_total": 0,
             "nonfinite_consecutive": 0}
    metrics_path = output_dir / "metrics.jsonl"
    if resume_from is not None:
        accelerator.load_state(str(resume_from / "accelerator"))
        state.update(json.loads((resume_from / ckpt.STATE_FILE).read_text()))
        if main_process:
            print(f"resumed from {resume_from} at step {state['step']}", flush=True)
    records: list[dict[str, Any]] = []
    if main_process:
        if resume_from is not None and metrics_path.exists():
            kept = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
            records = [r for r in kept if r["step"] <= state["step"]]
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    writer = None
    if tc.tensorboard and main_process:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(output_dir / "tensorboard"))
    can_sample = tc.sample_every > 0 and callable(getattr(model, "sample_for_logging", None))
    after_step = getattr(model, "after_optimizer_step", None)

    progress = tqdm(total=tc.max_steps, initial=state["step"], desc="train", dynamic_ncols=True,
                    disable=not (accelerator.is_local_main_process and tc.progress))
    global_batch = config.data.batch_size * accelerator.num_processes
    window: list[torch.Tensor] = []
    window_bad = False
    last_checkpoint = resume_from
    tick = time.perf_counter()
    while state["step"] < tc.max_steps:
        sampler.use_epoch(state["epoch"])
        epoch_loader = loader if state["batch_in_epoch"] == 0 else \
            accelerator.skip_first_batches(loader, state["batch_in_epoch"])
        for batch in epoch_loader:
            state["batch_in_epoch"] += 1
            with accelerator.accumulate(wrapper):
                outputs = wrapper(batch)
                loss = outputs["loss"]
                extra = sorted(k for k, v in outputs.items() if k != "loss" and v.numel() == 1)
                finite = torch.isfinite(loss.detach()).to(torch.float32)
                values = [finite, torch.nan_to_num(loss.detach().float(), nan=0.0)]
                values += [outputs[k].detach().float() for k in extra]
                # One collective per micro-step: every rank must agree to skip a bad step.
                gathered = accelerator.gather(torch.stack(values).reshape(1, -1))
                if bool(gathered[:, 0].min() > 0):
                    accelerator.backward(loss)
                else:
                    window_bad = True
                    # Keep DDP's reducer in step with a zero-gradient backward.
                    zero = sum((p * 0).sum() for p in wrapper.parameters())
                    accelerator.backward(zero)
                window.append(gathered[:, 1:].mean(dim=0))
                if not accelerator.sync_gradients:
                    continue
                lr = scheduler.get_last_lr()[0]
                grad_norm = None
                if window_bad:
                    state["nonfinite_total"] += 1
                    state["nonfinite_consecutive"] += 1
                else:
                    state["nonfinite_consecutive"] = 0
                    if tc.max_grad_norm:
                        grad_norm = accelerator.clip_grad_norm_(wrapper.parameters(),
                                                                tc.max_grad_norm)
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                if not window_bad:
                    if projector is not None:
                        with torch.no_grad():
                            projector.project()
                    if ema is not None:
                        ema.update(model)
                    if callable(after_step):
                        after_step()
            state["step"] += 1
            mean = torch.stack(window).mean(dim=0).tolist()
            window, window_was_bad, window_bad = [], window_bad, False
            now = time.perf_counter()
            if state["step"] % tc.log_every == 0 or state["step"] == tc.max_steps:
                record = {"step": state["step"], "loss": mean[0] if not window_was_bad
                          else float("nan"), "lr": lr, "epoch": state["epoch"],
                          "skipped": window_was_bad, "time_per_step": now - tick,
                          "samples_per_s": global_batch * tc.gradient_accumulation_steps
                          / max(now - tick, 1e-9)}
                if grad_norm is not None:
                    record["grad_norm"] = float(grad_norm)
                record.update({k: v for k, v in zip(extra, mean[1:])})
                if main_process:
                    records.append(record)
                    with open(metrics_path, "a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    if writer is not None:
                        for key, value in record.items():
                            if isinstance(value, int | float) and key != "step":
                                writer.add_scalar(key, value, state["step"])
            tick = now
            progress.update(1)
            progress.set_postfix(loss=f"{mean[0]:.4g}", lr=f"{lr:.3g}")
            if state["nonfinite_consecutive"] >= tc.max_nonfinite:
                good = save_checkpoint(output_dir, config, state, model, ema, accelerator,
                                       wrapper)
                progress.close()
                raise NonFiniteLossError(
                    f"training stopped at step {state['step']}: {tc.max_nonfinite} consecutive "
                    f"non-finite losses (trainer.max_nonfinite={tc.max_nonfinite}); the weights "
                    f"were never updated by them; last good checkpoint: {good}"
                )
            if can_sample and state["step"] % tc.sample_every == 0:
                _sample(accelerator, ema.model if ema is not None else model, tc, output_dir,
                        state["step"])
            if tc.checkpoint_every and state["step"] % tc.checkpoint_every == 0 \
                    and state["step"] < tc.max_steps:
                last_checkpoint = save_checkpoint(output_dir, config, state, model, ema,
                                                  accelerator, wrapper)
            if state["step"] >= tc.max_steps:
                break
        else:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
    progress.close()
    last_checkpoint = save_checkpoint(output_dir, config, state, model, ema, accelerator,
                                      wrapper)
    if main_process:
        if writer is not None:
            writer.close()
        if tc.plot and records:
            plot_losses(metrics_path, output_dir / "loss.png")
        print(f"done: step {state['step']}, checkpoint {last_checkpoint}", flush=True)
    accelerator.end_training()
    return TrainResult(state["step"], last_checkpoint, records, state["nonfinite_total"])


def _sample(accelerator: Any, model: nn.Module, tc: TrainerConfig, output_dir: Path,
            step: int) -> None:
    """Sample grid into output_dir/samples/ without disturbing the training RNG streams."""
    from accelerate.utils import DistributedType

    sharded = accelerator.distributed_type == DistributedType.FSDP
    if not (accelerator.is_main_process or sharded):
        return
    device = accelerator.device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        generator = torch.Generator(device=device).manual_seed(tc.seed)
        was_training = model.training
        model.eval()
        images = model.sample_for_logging(tc.num_samples, generator)
        model.train(was_training)
    if accelerator.is_main_process:
        save_image_grid(images, output_dir / "samples" / f"step-{step:07d}.png")


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (2 for bad input, 1 for a stopped run)."""
    parser = argparse.ArgumentParser(
        prog="python -m trainers.train",
        description="Train a registered model from a YAML config plus key=value overrides.",
    )
    parser.add_argument("--config", required=True, help="YAML file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. optimizer.lr=3e-4")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        preflight(config)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        train(config)
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
