"""The fine-tuning loop: setup, train, save, read top to bottom (no trainer, no callbacks).

`finetune(config)` is what `instructkit finetune` and the demo run. Setup loads the
records, splits them, tokenizes them once, loads the model (optionally wrapping it with
LoRA) and builds AdamW and the schedule. The loop takes `grad_accum` micro-batches per
optimizer step and normalises their summed loss by the number of target tokens of the
whole step, across all ranks: k accumulated micro-batches give the same gradient as one
k-times batch, and padding or masked prompts never dilute the loss (the book and LitGPT
average per micro-batch instead). Every `save_every` steps, at the end, and on Ctrl-C it
writes a resumable checkpoint; `resume=True` continues from the latest one with the
same data order, RNG and schedule, so the result is bitwise what an uninterrupted run
gives. At the end the model (LoRA merged) is saved in Hugging Face GPT-2 layout.

For tests only: INSTRUCTKIT_TEST_STEP_DELAY=SECONDS sleeps after each step, so a test
can kill a run mid-epoch.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from instructkit.config import FinetuneConfig, load_config, save_config
from instructkit.errors import DataError, ModelError, UserError
from instructkit.files import write_atomic
from instructkit.train import distributed
from instructkit.train.schedule import build_scheduler
from instructkit.train.state import (
    Position,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

RUN_ARTIFACTS = (
    "config.yaml",
    "metrics.jsonl",
    "loss.png",
    "checkpoints",
    "model",
    "adapter.safetensors",
    "responses.json",
    "scores.json",
    "report.md",
)
# Settings a resumed run may change without breaking the exact continuation of the data
# order, the model and the optimizer (epochs/max_steps extend or shorten the run; the run
# dir may have moved).
RESUME_MAY_CHANGE = {
    "out",
    "epochs",
    "max_steps",
    "eval_every",
    "eval_batches",
    "log_every",
    "save_every",
    "keep_checkpoints",
    "num_workers",
    "device",
    "compile",
}


class DivergedError(UserError):
    """The loss became NaN or infinite; the run stopped before applying that update."""


@dataclass
class RunResult:
    """What a fine-tuning run produced; `model` is the trained model in memory (LoRA merged)."""

    out_dir: Path
    model_dir: Path
    steps: int
    epochs: float
    tokens_seen: int
    initial_train_loss: float | None
    initial_val_loss: float | None
    train_loss: float | None
    val_loss: float | None
    trainable_parameters: int
    elapsed_s: float
    model: nn.Module
    tokenizer: Any


class LossModule(nn.Module):
    """The model's summed loss as `forward`, so DDP and torch.compile see the real work."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, targets, position_ids=None, segment_ids=None) -> torch.Tensor:
        return self.model.loss(input_ids, targets, position_ids, segment_ids, reduction="sum")


def finetune(
    config: FinetuneConfig,
    *,
    records: list[dict] | None = None,
    tokenizer: Any = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> RunResult:
    """Fine-tune `config.model` on `config.data` (or on `records`) into `config.out`.

    `tokenizer` (an instructkit Tokenizer or a tiktoken Encoding) overrides
    `config.tokenizer`. Under torchrun every rank calls this; rank 0 alone writes files.
    """
    info, device = distributed.init(config.device)
    try:
        return _finetune(config, info, device, records, tokenizer, resume, overwrite, progress)
    finally:
        distributed.shutdown(info)


def _finetune(
    config: FinetuneConfig,
    info: distributed.Dist,
    device: torch.device,
    records: list[dict] | None,
    tokenizer: Any,
    resume: bool,
    overwrite: bool,
    progress: bool,
) -> RunResult:
    from instructkit.data import InstructionCollator, InstructionDataset, build_loader
    from instructkit.model import load_pretrained, save_pretrained
    from instructkit.model.lora import apply_lora, count_parameters, merge_lora, save_adapter
    from instructkit.plots import plot_losses

    started = time.perf_counter()
    say = print if info.is_main else _silent
    out = Path(config.out)
    metrics_path = out / "metrics.jsonl"

    # ---- setup: run dir, data, model, optimizer -------------------------------------
    checkpoint = check_run_dir(config, resume, overwrite)  # every rank, before any write
    distributed.barrier(info)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    train_records, val_records = load_splits(config, records)

    model, tokenizer = load_pretrained(
        config.model,
        tokenizer=tokenizer if tokenizer is not None else config.tokenizer,
        seed=config.seed,
    )
    if tokenizer is None:
        raise ModelError(
            f"model {config.model!r} comes without a tokenizer; pass one with --tokenizer"
        )
    model_dropout = model.config.drop_rate
    if config.dropout is not None:
        model.set_dropout(config.dropout)
    context_length = model.config.context_length
    max_length = min(config.allowed_max_length or context_length, context_length)

    if config.lora_rank:
        wrapped = apply_lora(model, config.lora_rank, config.lora_alpha)
        say(f"LoRA rank {config.lora_rank}, alpha {config.lora_alpha} on {len(wrapped)} layers")
    model.to(device)
    trainable, total = count_parameters(model)
    say(f"Trainable parameters: {trainable:,} of {total:,}")

    collator = InstructionCollator(
        pad_token_id=tokenizer.eos_id,
        allowed_max_length=max_length,
        mask_prompt=config.mask_prompt,
        pack=config.pack,
    )
    train_set = InstructionDataset(train_records, tokenizer, style=config.style)
    val_set = InstructionDataset(val_records, tokenizer, style=config.style)
    loader_args = {
        "batch_size": config.batch_size,
        "group_by_length": config.group_by_length,
        "seed": config.seed,
        "rank": info.rank,
        "world_size": info.world_size,
        "num_workers": config.num_workers,
    }
    train_loader = build_loader(train_set, collator, shuffle=True, drop_last=True, **loader_args)
    val_loader = build_loader(val_set, collator, shuffle=False, drop_last=False, **loader_args)
    batches_per_epoch = len(train_loader)
    if batches_per_epoch == 0:
        raise DataError(
            f"{config.data}: {len(train_records)} training records make no full batch of "
            f"{config.batch_size} per process ({info.world_size} processes); lower --batch-size"
        )
    steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)

    params = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel updates each tensor in one pass: on CPU about 3x faster than the
    # default per-tensor loop, which costs as much as a forward pass for gpt2-small.
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, weight_decay=config.weight_decay, fused=device.type in ("cpu", "cuda")
    )
    scheduler = build_scheduler(
        optimizer, total_steps, config.warmup_steps, config.lr_schedule, config.min_lr_ratio
    )

    train_module: nn.Module = LossModule(model)
    if info.enabled:
        train_module = torch.nn.parallel.DistributedDataParallel(
            train_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        train_module = torch.compile(train_module)
    autocast = torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16(config, device)
    )
    if info.is_main:  # setup worked: now the run dir becomes this run's
        if overwrite:
            remove_run_artifacts(out)
        save_config(config, out / "config.yaml")
    distributed.barrier(info)

    position, pending_rng = Position(), None
    initial_train_loss = initial_val_loss = val_loss = None
    if checkpoint is not None:
        position, pending_rng = load_checkpoint(checkpoint, model, optimizer, scheduler)
        say(f"Resuming from {checkpoint} (step {position.step}, epoch {position.epoch + 1})")
        if info.is_main:
            truncate_metrics(metrics_path, position.step)
    else:
        initial_train_loss = evaluate(
            model, train_loader, config.eval_batches, device, info, autocast
        )
        initial_val_loss = evaluate(model, val_loader, config.eval_batches, device, info, autocast)
        say(f"Training loss: {initial_train_loss}")
        say(f"Validation loss: {initial_val_loss}")
        if info.is_main:
            metrics_path.unlink(missing_ok=True)
            append_metrics(
                metrics_path,
                {
                    "step": 0,
                    "epoch": 0.0,
                    "tokens_seen": 0,
                    "records_seen": 0,
                    "train_loss": initial_train_loss,
                    "val_loss": initial_val_loss,
                    "lr": scheduler.get_last_lr()[0],
                    "tokens_per_s": None,
                },
            )
    counters = {"loss_sum": 0.0, "tokens": 0.0, "seconds": 0.0, **position.counters}
    step_delay = float(os.environ.get("INSTRUCTKIT_TEST_STEP_DELAY", "0"))

    # ---- the loop ----------------------------------------------------------------------
    stop = StopRequest()
    bar = tqdm(
        total=total_steps,
        initial=position.step,
        desc="finetune",
        unit="step",
        disable=not (progress and info.is_main),
        dynamic_ncols=True,
    )
    batches: Iterator | None = None
    epoch_batches = batches_per_epoch
    train_loss = None
    with stop.installed(), bar:
        while position.step < total_steps:
            if batches is None:
                batches = open_epoch(train_loader, position, pending_rng)
                # Packing the reshuffled examples can take a batch more or less per epoch.
                epoch_batches = len(train_loader)
                pending_rng = None
            tick = time.perf_counter()  # the step's time includes collating its batches
            micro = list(itertools.islice(batches, config.grad_accum))
            lr = scheduler.get_last_lr()[0]

            local_loss, step_tokens, step_records = accumulate_gradients(
                train_module, micro, info, device, autocast
            )
            global_loss_sum, stop_votes = distributed.sum_across(
                [local_loss, float(stop.requested)], info, device
            )
            step_loss = global_loss_sum / max(step_tokens, 1.0)
            if not math.isfinite(step_loss):
                raise DivergedError(
                    f"loss became {step_loss} at step {position.step + 1}; stopped before "
                    f"applying that update; the last good checkpoint is "
                    f"{latest_checkpoint(out / 'checkpoints') or 'none (no checkpoint yet)'}; "
                    "try a lower --lr or --grad-clip 1.0"
                )
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            position.step += 1
            position.batch_index += len(micro)
            position.tokens_seen += int(step_tokens)
            position.records_seen += int(step_records)
            if position.batch_index >= epoch_batches:
                position.epoch, position.batch_index, batches = position.epoch + 1, 0, None
            counters["loss_sum"] += global_loss_sum
            counters["tokens"] += step_tokens
            counters["seconds"] += time.perf_counter() - tick
            train_loss = step_loss
            epoch = position.epoch + position.batch_index / epoch_batches
            tokens_per_s = counters["tokens"] / max(counters["seconds"], 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")

            # ---- at the step boundary: evaluate, log, checkpoint, maybe stop ----------
            finished = position.step == total_steps
            evaluate_now = finished or (
                config.eval_every and position.step % config.eval_every == 0
            )
            val_loss = None
            if evaluate_now:
                val_loss = evaluate(model, val_loader, config.eval_batches, device, info, autocast)
                if info.is_main and progress:
                    bar.write(
                        f"Ep {epoch:.2f} (Step {position.step:06d}): "
                        f"Train loss {step_loss:.3f}, Val loss {val_loss:.3f}"
                    )
            if evaluate_now or finished or position.step % config.log_every == 0:
                if info.is_main:
                    append_metrics(
                        metrics_path,
                        {
                            "step": position.step,
                            "epoch": round(epoch, 6),
                            "tokens_seen": position.tokens_seen,
                            "records_seen": position.records_seen,
                            "train_loss": counters["loss_sum"] / max(counters["tokens"], 1.0),
                            "val_loss": val_loss,
                            "lr": lr,
                            "tokens_per_s": tokens_per_s,
                        },
                    )
                counters = {"loss_sum": 0.0, "tokens": 0.0, "seconds": 0.0}
            stopping = stop_votes > 0
            if (
                finished
                or stopping
                or (config.save_every and position.step % config.save_every == 0)
            ):
                position.counters = dict(counters)
                save(out, position, model, optimizer, scheduler, config, info)
            if stopping:
                bar.close()
                say(
                    f"Interrupted: saved checkpoint step-{position.step} in {out / 'checkpoints'}; "
                    "continue with --resume"
                )
                raise KeyboardInterrupt
            if step_delay:
                time.sleep(step_delay)

    # ---- save the final model ------------------------------------------------------
    model_dir = out / "model"
    if info.is_main:
        if config.lora_rank:
            save_adapter(model, out / "adapter.safetensors")
            merge_lora(model)
        model.eval()
        model.set_dropout(model_dropout)  # a training choice, not part of the saved model
        save_pretrained(
            model,
            tokenizer,
            model_dir,
            metadata={"style": config.style, "base_model": config.model},
        )
        plot_losses(read_metrics(metrics_path), out / "loss.png")
        say(f"Saved the fine-tuned model to {model_dir}")
    distributed.barrier(info)
    return RunResult(
        out_dir=out,
        model_dir=model_dir,
        steps=position.step,
        epochs=position.epoch + position.batch_index / epoch_batches,
        tokens_seen=position.tokens_seen,
        initial_train_loss=initial_train_loss,
        initial_val_loss=initial_val_loss,
        train_loss=train_loss,
        val_loss=val_loss,
        trainable_parameters=trainable,
        elapsed_s=time.perf_counter() - started,
        model=model,
        tokenizer=tokenizer,
    )


# ---- setup helpers ----------------------------------------------------------------------


def check_run_dir(config: FinetuneConfig, resume: bool, overwrite: bool) -> Path | None:
    """Check the run dir against resume/overwrite; return the checkpoint to resume from."""
    out = Path(config.out)
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one of them")
    if resume:
        saved = out / "config.yaml"
        if not saved.is_file():
            raise UserError(f"{out}: nothing to resume (no config.yaml in the run directory)")
        check_resume_config(config, saved)
        return latest_checkpoint(out / "checkpoints")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(
            f"{out}: run directory is not empty; pass --resume to continue that run "
            "or --overwrite to replace it"
        )
    return None


def check_resume_config(config: FinetuneConfig, saved_path: Path) -> None:
    saved = load_config(saved_path)
    problems = [
        f"{field.name}: this run was started with {saved.get(field.name)!r}, now {getattr(config, field.name)!r}"
        for field in fields(FinetuneConfig)
        if field.name not in RESUME_MAY_CHANGE
        and field.name in saved
        and saved[field.name] != getattr(config, field.name)
    ]
    if problems:
        raise UserError(
            [f"{saved_path}: cannot resume with a different setting ({p})" for p in problems]
        )


def remove_run_artifacts(out: Path) -> None:
    import shutil

    for name in RUN_ARTIFACTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def load_splits(config: FinetuneConfig, records: list[dict] | None) -> tuple[list, list]:
    """The train and validation records (the test split is left for generation)."""
    from instructkit.data import load_instructions, split_records

    if records is None:
        records = load_instructions(config.data)
    train, _test, val = split_records(records, config.split, config.seed, source=config.data)
    if not train or not val:
        raise DataError(
            f"{config.data}: {len(records)} records leave {len(train)} for training and "
            f"{len(val)} for validation; the {config.split} split needs more records"
        )
    return train, val


def use_bf16(config: FinetuneConfig, device: torch.device) -> bool:
    """bf16 autocast: by default on CUDA; on request on the CPU too, where CPUs with AVX-512
    BF16 or AMX multiply bf16 several times faster than fp32 (4.4x measured, BENCHMARKS.md)."""
    if config.precision == "bf16" and device.type not in ("cuda", "cpu"):
        raise UserError(f"precision: bf16 autocast runs on CUDA or the CPU, this run uses {device}")
    return config.precision == "bf16" or (device.type == "cuda" and config.precision == "auto")


# ---- loop helpers -----------------------------------------------------------------------


def accumulate_gradients(
    train_module: nn.Module, micro: list, info: distributed.Dist, device, autocast
) -> tuple[float, float, float]:
    """Backward over one optimizer step's micro-batches; the gradient is that of the mean
    loss over all target tokens of the step on all ranks.

    The step's target tokens are counted first (summed over ranks), each micro-batch's
    summed loss is divided by that count, and DDP's averaging over ranks is undone by
    `world_size`; gradients sync once, on the last micro-batch. Returns this rank's loss
    sum, and the global target and record counts.
    """
    local_tokens = sum(batch.num_target_tokens for batch in micro)
    local_records = sum(batch.num_records for batch in micro)
    step_tokens, step_records = distributed.sum_across([local_tokens, local_records], info, device)
    scale = info.world_size / max(step_tokens, 1.0)
    loss_sum = torch.zeros((), device=device)
    train_module.train()
    for i, batch in enumerate(micro):
        batch = batch.to(device)
        last = i == len(micro) - 1
        sync = contextlib.nullcontext() if last or not info.enabled else train_module.no_sync()
        with sync:
            with autocast:
                batch_loss = train_module(
                    batch.input_ids, batch.targets, batch.position_ids, batch.segment_ids
                )
            (batch_loss * scale).backward()
        loss_sum += batch_loss.detach().float()
    return loss_sum.item(), step_tokens, step_records


def open_epoch(loader, position: Position, rng: dict | None) -> Iterator:
    """An iterator over the rest of `position.epoch`'s batches, in the seeded order.

    Creating a DataLoader iterator draws from torch's global RNG, so a resumed run
    restores the checkpoint's RNG state where the interrupted run had taken it: before
    opening the epoch if the checkpoint fell on an epoch boundary, after it otherwise.
    """
    for owner in (loader.batch_sampler, loader.sampler):
        if hasattr(owner, "set_epoch"):
            owner.set_epoch(position.epoch)
    if rng is not None and position.batch_index == 0:
        set_rng_state(rng)
    batches = iter(loader)
    if rng is not None and position.batch_index > 0:
        set_rng_state(rng)
    for _ in range(position.batch_index):
        next(batches)
    return batches


@torch.no_grad()
def evaluate(model, loader, num_batches: int, device, info, autocast) -> float:
    """Mean loss per target token over the first `num_batches` batches (all ranks)."""
    model.eval()
    loss_sum, tokens = 0.0, 0.0
    for batch in itertools.islice(loader, num_batches):
        batch = batch.to(device)
        with autocast:
            loss = model.loss(
                batch.input_ids,
                batch.targets,
                batch.position_ids,
                batch.segment_ids,
                reduction="sum",
            )
        loss_sum += loss.item()
        tokens += batch.num_target_tokens
    loss_sum, tokens = distributed.sum_across([loss_sum, tokens], info, device)
    model.train()
    return loss_sum / max(tokens, 1.0)


def save(out, position, model, optimizer, scheduler, config, info) -> None:
    """Rank 0 writes the checkpoint; every rank waits for it."""
    if info.is_main:
        save_checkpoint(
            out / "checkpoints",
            position,
            model,
            optimizer,
            scheduler,
            rng=rng_state(),
            keep=config.keep_checkpoints,
        )
    distributed.barrier(info)


class StopRequest:
    """Turns the first Ctrl-C into a request to stop at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            self.requested = True
            signal.signal(signal.SIGINT, previous)  # a second Ctrl-C interrupts at once
            print("\nStopping after this step to save a checkpoint (Ctrl-C again to abort)")

        signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


# ---- metrics.jsonl ----------------------------------------------------------------------


def append_metrics(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines an interrupted run logged after its last checkpoint, atomically."""
    rows = [row for row in read_metrics(path) if row["step"] <= step]
    write_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def _silent(*args, **kwargs) -> None:
    pass
