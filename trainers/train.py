"""The one Accelerate trainer: ``python -m trainers.train --config configs/X.yaml [key=value ...]``.

Single process::

    python -m trainers.train --config configs/smoke.yaml trainer.max_steps=100

Data-parallel on one node (N GPUs), many nodes, FSDP2 (see configs/accelerate/)::

    accelerate launch --multi_gpu --num_processes N -m trainers.train --config configs/X.yaml
    accelerate launch --config_file configs/accelerate/two_nodes.yaml --machine_rank R \\
        --main_process_ip HOST -m trainers.train --config configs/X.yaml
    accelerate launch --config_file configs/accelerate/fsdp2.yaml -m trainers.train ...

FSDP2 is applied by the trainer itself (``trainers.sharding``: the same code on CPU and GPU
ranks); ``trainer.activation_checkpointing`` and ``trainer.compile`` by ``trainers.speedups``.
The loop: gradient accumulation (``accelerator.accumulate``), clipping on the synchronising
micro-step, bf16/fp16 autocast, warm-up + cosine learning rate, EMA of weights and buffers,
the NaP projection after each step (``trainer.nap``), atomic pickle-free checkpoints with exact
resume (``trainers.checkpoint``), JSON-lines metrics, TensorBoard, sample grids and a loss plot.
A non-finite loss skips its step; ``trainer.max_nonfinite`` in a row stop the run, naming the
last checkpoint whose weights are finite (non-finite weights are never written). One trainer at
a time holds the run folder (``trainers.run_folder``); every rank stops when its launcher dies.

Exit codes of the CLI: 0 done; 2 the user's input is wrong (config, data, run folder, resume
checkpoint), one ``error:`` line; 1 the run stopped (non-finite losses or weights; one line) or a
bug (a traceback).

References: Gugger et al., Accelerate (https://github.com/huggingface/accelerate); Karpathy,
nanoGPT (https://github.com/karpathy/nanoGPT); Peebles & Xie, "Scalable Diffusion Models with
Transformers", arXiv:2212.09748 (EMA and training loop); Loshchilov & Hutter, "SGDR: Stochastic
Gradient Descent with Warm Restarts", arXiv:1608.03983 (cosine schedule); Lyle et al.,
"Normalization and effective learning rates in reinforcement learning", arXiv:2407.01800 (NaP).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # parse (and answer --help or a bad config) before torch loads
    from trainers.cli import main

    sys.exit(main())

import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from core import checkpoint as core_checkpoint
from core.registry import get_dataset, get_model
from trainers import checkpoint as ckpt
from trainers.config import TrainConfig, TrainerConfig
from trainers.protocol import CheckedCollate

__all__ = ["NonFiniteLossError", "TrainResult", "TrainingStopped", "lr_factor", "main", "train"]


class TrainingStopped(RuntimeError):
    """The run stopped early; the message names the last checkpoint whose weights are finite."""


class NonFiniteLossError(TrainingStopped):
    """Too many consecutive non-finite losses."""


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
    from trainers.sharding import fsdp_request

    trainer = config.trainer
    if fsdp_request() is not None:
        if trainer.mixed_precision == "fp16":
            raise ValueError("trainer.mixed_precision=fp16 does not run under FSDP2 (its loss "
                             "scaler is not shard-aware); use bf16")
        if trainer.nap:
            raise ValueError("trainer.nap=true does not run under FSDP2 (the projection needs "
                             "whole weight norms); set trainer.nap=false")
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
    if trainer.init_from is not None:
        core_checkpoint.resolve_source(trainer.init_from)


def init_weights(model: nn.Module, config: TrainConfig) -> None:
    """Copy ``trainer.init_from``'s raw weights into ``model`` (same kind, same shapes)."""
    source = config.trainer.init_from
    donor, _ = core_checkpoint.load_model(source, use_ema=False, kind=config.model.name)
    have, want = model.state_dict(), donor.state_dict()
    if have.keys() != want.keys():
        missing = sorted(have.keys() - want.keys()) or sorted(want.keys() - have.keys())
        raise ValueError(f"trainer.init_from={source!r}: its weights do not fit this model "
                         f"(parameter {missing[0]!r} is in one and not the other); the model "
                         "config must build the same layers")
    for key, value in want.items():
        if value.shape != have[key].shape:
            raise ValueError(f"trainer.init_from={source!r}: parameter {key!r} has shape "
                             f"{tuple(value.shape)} there and {tuple(have[key].shape)} in this "
                             "model; the model config must build the same shapes")
    model.load_state_dict(want)


def _say(accelerator: Any, text: str) -> None:
    if accelerator.is_main_process:
        print(text, flush=True)


# --------------------------------------------------------------------------- set-up


@dataclass
class _Run:
    """Everything the loop works on, built by ``_set_up``."""

    config: TrainConfig
    parts: ckpt.Trainables
    loss_fn: Any  # what a micro-step calls: the wrapper, or its compiled form
    loader: Any
    sampler: EpochSampler
    data_generator: torch.Generator
    state: ckpt.TrainerState
    output_dir: Path
    metrics: Any  # trainers.metrics.MetricsLog on the main process, else None
    last_checkpoint: Path | None


def _claim_run_folder(
    config: TrainConfig, accelerator: Any, lock: Any, sharded: bool
) -> tuple[Path | None, str]:
    """Lock and check the run folder on the main process; ``(resume checkpoint, run id)``.

    Every rank gets the main process's decision, or raises its error, so none waits for a peer
    that gave up.
    """
    from trainers.ranks import broadcast_text
    from trainers.run_folder import RunFolderError

    decision, failure = "", None
    if accelerator.is_main_process:
        try:
            decision = _decide_on_main(config, accelerator.num_processes, lock, sharded)
        except (ValueError, OSError) as error:
            failure, decision = error, f"error:{error}"
    decision = broadcast_text(accelerator, decision)
    if failure is not None:
        raise failure
    if decision.startswith("error:"):
        raise RunFolderError(decision.removeprefix("error:"))
    run_id, _, resume_text = decision.partition(":")
    return (Path(resume_text) if resume_text else None), run_id


def _decide_on_main(config: TrainConfig, processes: int, lock: Any, sharded: bool) -> str:
    """Lock, pick the checkpoint to resume, check the folder: ``"<run id>:<checkpoint>"``."""
    from trainers.run_folder import claim_run_folder

    tc = config.trainer
    output_dir = Path(tc.output_dir)
    lock.acquire()
    if lock.stale:
        print(f"taking over the lock of a trainer that is gone (pid {lock.stale.get('pid')} on "
              f"{lock.stale.get('host')})", flush=True)
    resume_from = ckpt.latest_checkpoint(output_dir) if tc.resume == "latest" else (
        ckpt.resolve_checkpoint(tc.resume) if tc.resume else None)
    for note in claim_run_folder(output_dir, tc.resume, resume_from, tc.overwrite):
        print(note, flush=True)
    ckpt.remove_stale_temporaries(output_dir)
    if resume_from is not None:
        state = ckpt.check_resumable(resume_from, processes, sharded)
        return f"{state.run_id}:{resume_from}"
    if tc.resume == "latest":
        print(f"no checkpoint in {output_dir}: starting from step 0", flush=True)
    return f"{uuid.uuid4().hex[:12]}:"


def _check_batch_size(config: TrainConfig, dataset_size: int, processes: int) -> None:
    batch = config.data.batch_size
    if config.trainer.drop_last and dataset_size < batch * processes:
        raise ValueError(
            f"data.batch_size={batch} x {processes} process(es) is larger than the dataset "
            f"{config.data.name!r} ({dataset_size} items) with trainer.drop_last=true: no batch "
            f"would be complete; allowed: data.batch_size <= {max(1, dataset_size // processes)}")


def _set_up(
    config: TrainConfig, accelerator: Any, resume_from: Path | None, run_id: str,
    fsdp: Any = None,
) -> _Run:
    """Model, data, optimizer, schedule, EMA, NaP; restored from ``resume_from`` if given.

    ``fsdp`` (a ``trainers.sharding.FsdpRequest``) shards the model instead of DDP.
    """
    from accelerate.utils import set_seed

    from trainers.metrics import MetricsLog

    tc = config.trainer
    # Same initial weights on every rank, then rank-specific randomness (noise, dropout).
    set_seed(tc.seed)
    model = get_model(config.model.name)(**config.model.kwargs)
    if tc.init_from is not None and resume_from is None:
        init_weights(model, config)
        _say(accelerator, f"weights from {tc.init_from} (trainer.init_from)")
    dataset = get_dataset(config.data.name)(**config.data.kwargs)
    _check_batch_size(config, len(dataset), accelerator.num_processes)
    sampler = EpochSampler(len(dataset), tc.seed, config.data.shuffle)
    data_generator = torch.Generator()
    limits = model.batch_limits() if hasattr(model, "batch_limits") else {}
    loader = DataLoader(
        dataset, batch_size=config.data.batch_size, sampler=sampler, drop_last=tc.drop_last,
        num_workers=config.data.num_workers, generator=data_generator,
        collate_fn=CheckedCollate(limits) if limits else None,
    )
    build = _build_sharded if fsdp is not None else _build_data_parallel
    parts, loader, scale = build(config, accelerator, model, loader, fsdp)
    loss_fn = parts.wrapper
    if tc.compile:
        from trainers.speedups import compile_loss

        loss_fn, unavailable = compile_loss(parts.wrapper, accelerator.device)
        if unavailable:
            _say(accelerator, f"warning: trainer.compile=true but {unavailable}: running eager")
        scale["compile"] = f"off ({unavailable})" if unavailable else "on (torch.compile, inductor)"
    set_seed(tc.seed, device_specific=True)

    state = ckpt.TrainerState(run_id=run_id)
    if resume_from is not None:
        state = ckpt.restore_checkpoint(resume_from, parts)
        _say(accelerator, f"resumed from {resume_from} at step {state.step}")
        if state.world_size != accelerator.num_processes:
            _say(accelerator, f"warning: {resume_from} was written by {state.world_size} "
                              f"process(es), this run has {accelerator.num_processes}: the "
                              "data position and random streams do not continue exactly")
    state.world_size = accelerator.num_processes
    output_dir = Path(tc.output_dir)
    metrics = None
    if accelerator.is_main_process:
        metrics = MetricsLog(output_dir, state.step if resume_from else None, tc.tensorboard)
        for note in metrics.notes:
            print(note, flush=True)
    _describe_run(config, accelerator, len(dataset), len(loader), state.step, scale)
    return _Run(config, parts, loss_fn, loader, sampler, data_generator, state, output_dir,
                metrics, resume_from)


def _optimizer_and_schedule(model: nn.Module, config: TrainConfig) -> tuple[Any, Any]:
    from trainers.optim import build_optimizer

    optimizer = build_optimizer(model, config.optimizer)
    # Stepped by hand once per optimizer step (prepared, Accelerate would step it per process).
    tc = config.trainer
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tc))
    return optimizer, scheduler


def _checkpointing(model: nn.Module, config: TrainConfig, forced: bool = False) -> str:
    """Activation checkpointing when asked (after the EMA copy: that one keeps plain blocks)."""
    if not (config.trainer.activation_checkpointing or forced):
        return "off"
    from trainers.speedups import enable_activation_checkpointing

    return f"on ({enable_activation_checkpointing(model)})"


def _build_data_parallel(
    config: TrainConfig, accelerator: Any, model: nn.Module, loader: Any, fsdp: Any
) -> tuple[ckpt.Trainables, Any, dict[str, str]]:
    """One process, or DDP through Accelerate: the model whole on every rank."""
    from trainers.ema import EMA

    tc = config.trainer
    optimizer, scheduler = _optimizer_and_schedule(model, config)
    wrapper, optimizer, loader = accelerator.prepare(LossModule(model), optimizer, loader)
    model = accelerator.unwrap_model(wrapper).model
    ema = EMA(model, tc.ema_decay) if tc.ema_decay is not None else None
    # NaP targets are the initial norms: built before any step, restored on resume.
    projector = _nap_projector_class()(model) if tc.nap else None
    processes = accelerator.num_processes
    scale = {"parallelism": "one process" if processes == 1
             else f"data parallel (DDP) over {processes} processes",
             "activation checkpointing": _checkpointing(model, config)}
    parts = ckpt.Trainables(accelerator, wrapper, model, optimizer, scheduler, ema, projector)
    return parts, loader, scale


def _build_sharded(
    config: TrainConfig, accelerator: Any, model: nn.Module, loader: Any, fsdp: Any
) -> tuple[ckpt.Trainables, Any, dict[str, str]]:
    """FSDP2 (``trainers.sharding``): shard units per transformer block, EMA sharded alike."""
    from trainers import sharding
    from trainers.ema import EMA

    tc = config.trainer
    model.to(accelerator.device)
    ema = EMA(model, tc.ema_decay) if tc.ema_decay is not None else None
    checkpointing = _checkpointing(model, config, forced=fsdp.activation_checkpointing)
    wrapper = LossModule(model)
    layout = sharding.shard_model(wrapper, model, fsdp, accelerator.device)
    if ema is not None:
        sharding.shard_like(ema.model, model)
    optimizer, scheduler = _optimizer_and_schedule(model, config)
    # The sharded module is not prepared (Accelerate would wrap it in DDP): only these are.
    optimizer, loader = accelerator.prepare(optimizer, loader)
    scale = {"parallelism": layout.describe(), "activation checkpointing": checkpointing}
    parts = ckpt.Trainables(accelerator, wrapper, model, optimizer, scheduler, ema, None,
                            sharded=True)
    return parts, loader, scale


def _describe_run(
    config: TrainConfig, accelerator: Any, items: int, batches: int, start: int,
    scale: dict[str, str],
) -> None:
    """Three lines at start: what will be run, on what, and how it is spread and sped up."""
    tc = config.trainer
    processes = accelerator.num_processes
    steps_per_epoch = math.ceil(batches / tc.gradient_accumulation_steps)
    remaining = tc.max_steps - start
    global_batch = config.data.batch_size * processes * tc.gradient_accumulation_steps
    _say(accelerator,
         f"training {config.model.name} on {config.data.name} ({items} items): steps "
         f"{start + 1}..{tc.max_steps} ({remaining} steps, about {remaining / steps_per_epoch:.3g} "
         f"epochs of {steps_per_epoch} steps); global batch {global_batch} = "
         f"{config.data.batch_size} per process x {processes} process(es) x "
         f"{tc.gradient_accumulation_steps} accumulation")
    _say(accelerator,
         f"running on {accelerator.device} with {processes} process(es) "
         f"(distributed type {accelerator.distributed_type.value}, precision "
         f"{accelerator.mixed_precision}, {torch.get_num_threads()} torch threads per process)")
    precision = "fp32" if accelerator.mixed_precision == "no" else \
        f"{accelerator.mixed_precision} autocast, fp32 weights"
    _say(accelerator,
         f"scale: {scale['parallelism']}; precision {precision}; activation checkpointing "
         f"{scale['activation checkpointing']}; compile {scale.get('compile', 'off')}")


# --------------------------------------------------------------------------- one step


class _Window:
    """The micro-steps of one optimizer step: losses gathered over ranks, any of them bad."""

    def __init__(self) -> None:
        self.values: list[torch.Tensor] = []
        self.keys: list[str] = []
        self.bad = False

    def mean(self) -> dict[str, float]:
        means = torch.stack(self.values).mean(dim=0).tolist()
        return dict(zip(["loss", *self.keys], means))


def _forward_backward(run: _Run, batch: dict[str, torch.Tensor], window: _Window) -> None:
    """One micro-step; a non-finite loss on any rank makes every rank skip the whole step."""
    accelerator, wrapper = run.parts.accelerator, run.parts.wrapper
    with accelerator.autocast():  # the sharded module is not prepared: autocast here for both
        outputs = run.loss_fn(batch)
    loss = outputs["loss"]
    window.keys = sorted(k for k, v in outputs.items() if k != "loss" and v.numel() == 1)
    finite = torch.isfinite(loss.detach()).to(torch.float32)
    values = [finite, torch.nan_to_num(loss.detach().float(), nan=0.0)]
    values += [outputs[k].detach().float() for k in window.keys]
    # One collective per micro-step: every rank must agree to skip a bad step.
    gathered = accelerator.gather(torch.stack(values).reshape(1, -1))
    if bool(gathered[:, 0].min() > 0):
        accelerator.backward(loss)
    else:
        window.bad = True
        if run.parts.sharded:
            # Every rank runs FSDP's backward collectives; the step is skipped, grads dropped.
            accelerator.backward(loss)
        else:
            # Keep DDP's reducer in step with a zero-gradient backward.
            accelerator.backward(sum((p * 0).sum() for p in wrapper.parameters()))
    window.values.append(gathered[:, 1:].mean(dim=0))


def _optimizer_step(run: _Run, window: _Window) -> tuple[float, Any]:
    """Clip, step, schedule, NaP, EMA and the model's hook; ``(lr used, grad norm or None)``."""
    parts, tc, state = run.parts, run.config.trainer, run.state
    lr = parts.scheduler.get_last_lr()[0]
    grad_norm = None
    if window.bad:
        state.nonfinite_total += 1
        state.nonfinite_consecutive += 1
    else:
        state.nonfinite_consecutive = 0
        if tc.max_grad_norm:
            from trainers.sharding import whole

            grad_norm = whole(parts.accelerator.clip_grad_norm_(parts.wrapper.parameters(),
                                                                tc.max_grad_norm))
        parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scheduler.step()
    if not window.bad:
        if parts.projector is not None:
            with torch.no_grad():
                parts.projector.project()
        if parts.ema is not None:
            parts.ema.update(parts.model)
        after_step = getattr(parts.model, "after_optimizer_step", None)
        if callable(after_step):
            after_step()
    return lr, grad_norm


def _train_on_batch(run: _Run, batch: dict[str, torch.Tensor], window: _Window) -> Any:
    """One micro-batch; ``(lr, grad norm)`` when it completed an optimizer step, else None."""
    accelerator = run.parts.accelerator
    run.state.batch_in_epoch += 1
    with accelerator.accumulate(run.parts.wrapper):
        if run.parts.sharded:  # FSDP2 reduce-scatters only on the synchronising micro-step
            run.parts.wrapper.set_requires_gradient_sync(accelerator.sync_gradients)
        _forward_backward(run, batch, window)
        if accelerator.sync_gradients:
            return _optimizer_step(run, window)
    return None


# --------------------------------------------------------------------------- logging


def _log_step(run: _Run, window: _Window, lr: float, grad_norm: Any, seconds: float) -> None:
    """A metrics record every ``log_every`` steps (and at the last), on the main process."""
    tc, state = run.config.trainer, run.state
    if run.metrics is None or not (state.step % tc.log_every == 0 or state.step == tc.max_steps):
        return
    means = window.mean()
    loss = means.pop("loss")
    samples = run.config.data.batch_size * run.parts.accelerator.num_processes \
        * tc.gradient_accumulation_steps
    record = {"step": state.step, "loss": math.nan if window.bad else loss, "lr": lr,
              "epoch": state.epoch, "skipped": window.bad, "time_per_step": seconds,
              "samples_per_s": samples / max(seconds, 1e-9)}
    if grad_norm is not None:
        record["grad_norm"] = float(grad_norm)  # a device sync: only when logged
    record.update(means)
    run.metrics.append(record)


# --------------------------------------------------------------------------- checkpoints


def _checkpoint(run: _Run) -> Path:
    """Write a checkpoint; a run whose weights are not finite stops instead."""
    try:
        path = ckpt.write_checkpoint(run.output_dir, run.config, run.state, run.parts)
    except ckpt.NonFiniteWeightsError as error:
        raise TrainingStopped(f"training stopped at step {run.state.step}: {error}; "
                              f"{_last_finite(run)}") from None
    run.last_checkpoint = path
    return path


def _last_finite(run: _Run) -> str:
    if run.last_checkpoint is not None:
        return f"last checkpoint with finite weights: {run.last_checkpoint}"
    return "there is no earlier checkpoint with finite weights (try a lower optimizer.lr)"


def _stop_on_nonfinite_losses(run: _Run) -> None:
    tc, state = run.config.trainer, run.state
    if state.nonfinite_consecutive < tc.max_nonfinite:
        return
    prefix = (f"training stopped at step {state.step}: {tc.max_nonfinite} consecutive non-finite "
              f"losses (trainer.max_nonfinite={tc.max_nonfinite})")
    try:
        good = ckpt.write_checkpoint(run.output_dir, run.config, state, run.parts)
    except ckpt.NonFiniteWeightsError as error:
        raise NonFiniteLossError(f"{prefix}; {error}; {_last_finite(run)}") from None
    run.last_checkpoint = good
    raise NonFiniteLossError(f"{prefix}; the weights were never updated by them; last good "
                             f"checkpoint: {good}")


def _after_step(run: _Run) -> None:
    """The per-step hooks: non-finite stop, sample grid, periodic checkpoint."""
    from trainers.samples import sample_grid

    tc, step, parts = run.config.trainer, run.state.step, run.parts
    _stop_on_nonfinite_losses(run)
    can_sample = callable(getattr(parts.model, "sample_for_logging", None))
    if tc.sample_every and can_sample and step % tc.sample_every == 0:
        model = parts.ema.model if parts.ema is not None else parts.model
        if parts.sharded:  # whole weights on the main process (a collective)
            from trainers.sharding import gathered_copy

            model = gathered_copy(model, parts.accelerator.is_main_process)
        sample_grid(parts.accelerator, model, tc.num_samples, tc.seed,
                    run.output_dir / "samples" / f"step-{step:07d}.png")
    if tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < tc.max_steps:
        _checkpoint(run)


# --------------------------------------------------------------------------- the loop


def _loop(run: _Run) -> None:
    from tqdm.auto import tqdm

    from trainers.metrics import StepClock

    tc, state, accelerator = run.config.trainer, run.state, run.parts.accelerator
    progress = tqdm(total=tc.max_steps, initial=state.step, desc="train", dynamic_ncols=True,
                    disable=not (accelerator.is_local_main_process and tc.progress))
    clock = StepClock(state.step)
    window = _Window()
    try:
        while state.step < tc.max_steps:
            run.sampler.use_epoch(state.epoch)
            # Worker seeds are a function of the epoch too, so a resumed epoch draws the same.
            run.data_generator.manual_seed(tc.seed * 1_000_003 + state.epoch)
            batches = run.loader if state.batch_in_epoch == 0 else \
                accelerator.skip_first_batches(run.loader, state.batch_in_epoch)
            for batch in batches:
                stepped = _train_on_batch(run, batch, window)
                if stepped is None:
                    continue
                state.step += 1
                seconds, eta = clock.lap(state.step, tc.max_steps)
                _log_step(run, window, *stepped, seconds)
                if eta is not None:
                    _say(accelerator, eta)
                progress.update(1)
                if not progress.disable:  # window.mean() waits for the device: only when shown
                    progress.set_postfix(loss=f"{window.mean()['loss']:.4g}",
                                         lr=f"{stepped[0]:.3g}")
                window = _Window()
                _after_step(run)
                if state.step >= tc.max_steps:
                    break
            else:
                state.epoch += 1
                state.batch_in_epoch = 0
    finally:
        progress.close()


def train(config: TrainConfig) -> TrainResult:
    """Run the training described by ``config`` (call under ``accelerate launch`` for DP)."""
    preflight(config)
    threads = torch.get_num_threads()
    if config.trainer.threads is not None:
        torch.set_num_threads(config.trainer.threads)
    try:
        return _train(config)
    finally:
        torch.set_num_threads(threads)


def _train(config: TrainConfig) -> TrainResult:
    from accelerate import Accelerator

    from trainers.ranks import stop_with_launcher
    from trainers.run_folder import RunLock
    from trainers.sharding import accelerator_without_fsdp, fsdp_request

    tc = config.trainer
    fsdp = fsdp_request()
    with accelerator_without_fsdp():  # the trainer shards by itself (trainers.sharding)
        accelerator = Accelerator(
            gradient_accumulation_steps=tc.gradient_accumulation_steps,
            mixed_precision=tc.mixed_precision,
        )
    stop_with_launcher()
    if fsdp is not None and accelerator.num_processes == 1:
        _say(accelerator, "note: FSDP2 requested for a single process: nothing to shard, "
                          "running unsharded")
        fsdp = None
    lock = RunLock(tc.output_dir)
    try:
        resume_from, run_id = _claim_run_folder(config, accelerator, lock, fsdp is not None)
        # printed once the folder is ours: a refused run says only why, in one line
        _say(accelerator, f"resolved config:\n{config.to_yaml()}")
        run = _set_up(config, accelerator, resume_from, run_id, fsdp)
        try:
            _loop(run)
            _checkpoint(run)
        finally:
            if run.metrics is not None:
                run.metrics.close(plot=tc.plot)
        _say(accelerator, f"done: step {run.state.step}, checkpoint {run.last_checkpoint}")
    finally:
        lock.release()
    accelerator.end_training()
    records = run.metrics.records if run.metrics is not None else []
    return TrainResult(run.state.step, run.last_checkpoint, records, run.state.nonfinite_total)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """The command line (:mod:`trainers.cli`): 0 done, 2 bad input, 1 a stopped run or a bug."""
    from trainers.cli import main as cli_main

    return cli_main(argv)
