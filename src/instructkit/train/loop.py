"""The fine-tuning recipe: `setup`, `train`, `finish`, read top to bottom (no trainer, no callbacks).

`finetune(config)` is what `instructkit finetune` and the demo run. `setup` checks the
run directory, loads and splits the records, tokenizes them once, loads the model
(optionally wrapped with LoRA), builds AdamW and the schedule, then resumes from the
latest checkpoint or measures the initial losses. `train` runs the optimizer steps,
evaluating, logging and checkpointing when due; `finish` saves the model (LoRA merged)
in Hugging Face GPT-2 layout and plots the losses.

The step's pieces live beside this file so that a recipe with another objective reuses
them rather than copying this one: `steps` (token-weighted gradient accumulation and
evaluation for any objective module), `state` (checkpoints, exact resume), `metrics`
(metrics.jsonl), `stopping` (Ctrl-C, divergence), `rundir` (resume/overwrite rules).
"""

from __future__ import annotations

import itertools
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from instructkit import console, loading
from instructkit.config import FinetuneConfig
from instructkit.console import PipeSafe
from instructkit.data import (
    InstructionCollator,
    InstructionDataset,
    build_loader,
    count_untrained,
    load_instructions,
    split_records,
)
from instructkit.data.chat_template import resolve_style
from instructkit.data.leakage import leakage_warning
from instructkit.data.stats import truncation_limit
from instructkit.errors import DataError, ModelError, UserError
from instructkit.files import check_writable
from instructkit.model import load_pretrained, save_pretrained
from instructkit.model.lora import apply_lora, count_parameters, merge_lora, save_adapter
from instructkit.plots import plot_losses
from instructkit.train import distributed, fsdp
from instructkit.train.guards import check_fingerprint, owned_run_dir, records_fingerprint
from instructkit.train.metrics import LossWindow, append_metrics, read_metrics, truncate_metrics
from instructkit.train.rundir import check_run_dir, claim_run_dir, remove_run_artifacts
from instructkit.train.schedule import build_scheduler
from instructkit.train.sharded import (
    is_sharded_checkpoint,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
)
from instructkit.train.state import (
    Position,
    latest_checkpoint,
    load_checkpoint,
    open_epoch,
    save_run_checkpoint,
)
from instructkit.train.steps import LossModule, Units, accumulate_gradients, evaluate, target_tokens
from instructkit.train.stopping import (
    DivergedError,
    StopRequest,
    check_finite,
    install_test_step_delay,
)


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


@dataclass
class Run:
    """What `setup` builds and `train` and `finish` read and advance."""

    config: FinetuneConfig
    info: distributed.Dist
    device: torch.device
    say: Callable[..., None]  # print on rank 0, silent elsewhere
    started: float
    model: nn.Module
    tokenizer: Any
    model_dropout: float  # the loaded model's, restored before saving
    trainable: int
    train_loader: Any
    val_loader: Any
    total_steps: int
    epoch_batches: int  # batches in the current epoch (packing varies it by one or so)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    objective: nn.Module  # forward(batch) -> summed loss (steps.py); evaluation calls it
    train_module: nn.Module  # the objective, wrapped for DDP and torch.compile
    autocast: torch.autocast
    units: Units = target_tokens  # what the objective's loss sum is averaged over
    position: Position = field(default_factory=Position)
    pending_rng: dict | None = None  # a checkpoint's RNG, restored when its epoch opens
    window: LossWindow = field(default_factory=LossWindow)
    initial_train_loss: float | None = None
    initial_val_loss: float | None = None
    train_loss: float | None = None
    val_loss: float | None = None

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    @property
    def epoch(self) -> float:
        return self.position.epoch + self.position.batch_index / self.epoch_batches


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
    return run_recipe(setup, config, records, tokenizer, resume, overwrite, progress)


def run_recipe(
    setup_run: Callable[..., Run],
    config: Any,
    records: list[dict] | None,
    tokenizer: Any,
    resume: bool,
    overwrite: bool,
    progress: bool,
) -> RunResult:
    """`setup_run` (finetune's `setup`, or DPO's), then `train` and `finish`, holding the run
    dir; a run that diverges before its first checkpoint leaves nothing behind."""
    check_writable(config.out, "--out", directory=True)  # before any long work
    info, device = distributed.init(config.device)
    try:
        with owned_run_dir(config.out, hold=info.is_main):  # one process per run dir
            run = setup_run(
                config,
                info,
                device,
                records=records,
                tokenizer=tokenizer,
                resume=resume,
                overwrite=overwrite,
            )
            try:
                train(run, progress)
            except DivergedError:
                if info.is_main and not resume and latest_checkpoint(run.checkpoints) is None:
                    remove_run_artifacts(run.out)  # nothing worth keeping: a retry starts clean
                raise
            return finish(run)
    finally:
        distributed.shutdown(info)


# ---- setup ------------------------------------------------------------------------------


def setup(
    config: FinetuneConfig,
    info: distributed.Dist,
    device: torch.device,
    *,
    records: list[dict] | None,
    tokenizer: Any,
    resume: bool,
    overwrite: bool,
) -> Run:
    """Data, model, optimizer and position of a run; the run dir is claimed once this works."""
    started = time.perf_counter()
    say = console.say if info.is_main else _silent
    # every rank, before any write
    checkpoint = check_run_dir(config, resume, overwrite, info.world_size)
    distributed.barrier(info)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    if records is None:
        records = load_instructions(config.data)
    fingerprint = records_fingerprint(records)
    if resume:  # the same records, or the data position and the model are meaningless
        check_fingerprint(Path(config.out), fingerprint, config.data)
    train_records, test_records, val_records = load_splits(config, records)
    if config.check_leakage and info.is_main:
        warning = leakage_warning(train_records, test_records, val_records, config.data)
        if warning:
            say(warning)
    model, tokenizer, model_dropout = load_model(config, tokenizer, device, say)
    trainable, total = count_parameters(model)
    say(f"Trainable parameters: {trainable:,} of {total:,}")
    bf16 = use_bf16(config, device)
    say(precision_line(config, device, bf16))
    train_loader, val_loader = build_loaders(
        config, model, tokenizer, train_records, val_records, info
    )
    # the loader's dataset is the training examples
    say(untrained_line(config, train_loader.dataset, model.config.context_length))
    batches_per_epoch = len(train_loader)
    total_steps = count_steps(config, batches_per_epoch, len(train_records), info)
    objective = LossModule(model)
    train_module = wrap_for_training(objective, config, info, device)  # FSDP: before AdamW
    optimizer, scheduler = build_optimizer(config, model, total_steps, device)
    install_test_step_delay(optimizer)
    run = Run(
        config=config,
        info=info,
        device=device,
        say=say,
        started=started,
        model=model,
        tokenizer=tokenizer,
        model_dropout=model_dropout,
        trainable=trainable,
        train_loader=train_loader,
        val_loader=val_loader,
        total_steps=total_steps,
        epoch_batches=batches_per_epoch,
        optimizer=optimizer,
        scheduler=scheduler,
        objective=objective,
        train_module=train_module,
        autocast=torch.autocast(device.type, torch.bfloat16, enabled=bf16),
    )
    if info.is_main:  # setup worked: now the run dir becomes this run's
        claim_run_dir(config, overwrite, fingerprint)
    distributed.barrier(info)
    if checkpoint is not None:
        resume_from(run, checkpoint)
    else:
        measure_initial_losses(run)
    return run


def load_splits(config: FinetuneConfig, records: list[dict]) -> tuple[list, list, list]:
    """The train, test and validation records (test is only checked for leakage: it is left
    for generation)."""
    train, test, val = split_records(records, config.split, config.seed, source=config.data)
    if not train or not val:
        raise DataError(
            f"{config.data}: the {config.split} split of {console.plural(len(records), 'record')} "
            f"leaves {len(train)} for training and {len(val)} for validation; it needs more records"
        )
    return train, test, val


def load_model(
    config: FinetuneConfig, tokenizer: Any, device: torch.device, say: Callable[..., None]
) -> tuple[nn.Module, Any, float]:
    """The model to train on `device` (LoRA-wrapped when asked), its tokenizer, its dropout."""
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
    if config.lora_rank:
        wrapped = apply_lora(model, config.lora_rank, config.lora_alpha)
        say(f"LoRA rank {config.lora_rank}, alpha {config.lora_alpha} on {len(wrapped)} layers")
    return model.to(device), tokenizer, model_dropout


def build_loaders(config, model, tokenizer, train_records, val_records, info) -> tuple[Any, Any]:
    """Training loader (shuffled, full batches) and validation loader over tokenized records."""
    context_length = model.config.context_length
    collator = InstructionCollator(
        pad_token_id=tokenizer.eos_id,
        allowed_max_length=min(config.allowed_max_length or context_length, context_length),
        mask_prompt=config.mask_prompt,
        pack=config.pack,
    )
    train_set = InstructionDataset(train_records, tokenizer, config.style, config.train_on)
    val_set = InstructionDataset(val_records, tokenizer, train_set.style, config.train_on)
    return train_and_val_loaders(config, info, collator, train_set, val_set)


def train_and_val_loaders(config, info, collator, train_set, val_set) -> tuple[Any, Any]:
    """Training loader (shuffled, full batches) and validation loader, for any objective."""
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
    return train_loader, val_loader


def untrained_line(config: FinetuneConfig, examples: list, context_length: int) -> str:
    """How many training examples truncation leaves with no trained token: they cost
    compute and teach nothing (a long user turn can push every assistant token out)."""
    limit = truncation_limit(config.allowed_max_length, context_length)
    untrained = count_untrained(examples, limit, config.mask_prompt)
    line = (
        f"Examples with no trained token after truncation to {limit} tokens: "
        f"{untrained} of {len(examples)}"
    )
    if untrained:
        line += " (they add nothing to the loss; raise --allowed-max-length or shorten them)"
    return line


def count_steps(
    config: FinetuneConfig, batches_per_epoch: int, num_records: int, info: distributed.Dist
) -> int:
    """Optimizer steps of the whole run."""
    if batches_per_epoch == 0:
        raise DataError(
            f"{config.data}: {console.plural(num_records, 'training record')} fill no batch of "
            f"{config.batch_size} per process "
            f"({console.plural(info.world_size, 'process', 'processes')}); lower --batch-size"
        )
    total_steps = math.ceil(batches_per_epoch / config.grad_accum) * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    return total_steps


def build_optimizer(
    config: FinetuneConfig, model: nn.Module, total_steps: int, device: torch.device
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    params = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel updates each tensor in one pass: on CPU about 3x faster than the
    # default per-tensor loop, which costs as much as a forward pass for gpt2-small.
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, weight_decay=config.weight_decay, fused=device.type in ("cpu", "cuda")
    )
    scheduler = build_scheduler(
        optimizer, total_steps, config.warmup_steps, config.lr_schedule, config.min_lr_ratio
    )
    return optimizer, scheduler


def wrap_for_training(
    objective: nn.Module, config: FinetuneConfig, info: distributed.Dist, device: torch.device
) -> nn.Module:
    """The module training calls: activation checkpointing, then FSDP (in place) or DDP
    under torchrun, then torch.compile, each when asked."""
    if config.activation_checkpointing:
        fsdp.checkpoint_activations(objective)
    if info.enabled and config.strategy == "fsdp":
        objective = fsdp.shard(objective, bf16=use_bf16(config, device))
    elif info.enabled:
        objective = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None
        )
    return torch.compile(objective) if config.compile else objective


def use_bf16(config: FinetuneConfig, device: torch.device) -> bool:
    """bf16 autocast: by default on CUDA and on CPUs that multiply bf16 natively (AVX-512
    BF16, AMX: 4.4x fp32's matmul rate measured, BENCHMARKS.md); on request elsewhere."""
    if config.precision == "bf16" and device.type not in ("cuda", "cpu"):
        raise UserError(f"precision: bf16 autocast runs on CUDA or the CPU, this run uses {device}")
    if config.precision == "auto":
        return device.type == "cuda" or (device.type == "cpu" and loading.cpu_has_native_bf16())
    return config.precision == "bf16"


def precision_line(config: FinetuneConfig, device: torch.device, bf16: bool) -> str:
    """What --precision resolved to, and why when 'auto' decided on the CPU."""
    chosen = "bf16 autocast" if bf16 else "fp32"
    if config.precision != "auto" or device.type != "cpu":
        return f"Precision: {chosen}"
    if bf16:
        return f"Precision: {chosen} (this CPU multiplies bf16 natively; --precision fp32 to turn it off)"
    return f"Precision: {chosen} (this CPU has no native bf16; --precision bf16 forces autocast)"


def resume_from(run: Run, checkpoint: Path) -> None:
    load = load_sharded_checkpoint if is_sharded_checkpoint(checkpoint) else load_checkpoint
    run.position, run.pending_rng = load(checkpoint, run.model, run.optimizer, run.scheduler)
    run.window = LossWindow(**run.position.counters)
    run.say(f"Resuming from {checkpoint} (step {run.position.step}, epoch {run.epoch:.2f})")
    if run.info.is_main:
        truncate_metrics(run.metrics_path, run.position.step)
        # The losses where the run stands: what a finished run that is resumed reports.
        rows = read_metrics(run.metrics_path)
        if rows:
            run.train_loss, run.val_loss = rows[-1]["train_loss"], rows[-1]["val_loss"]


def measure_initial_losses(run: Run) -> None:
    """The book's first printout, and metrics.jsonl's step 0 row: both losses over the same
    number of batches. A small validation split caps it; otherwise `eval_batches` larger
    than that split (the demo asks for all of it) would cost as many forward passes over
    the far larger training split, for one number (34-43 s of every demo run)."""
    batches = max(1, min(run.config.eval_batches, len(run.val_loader)))
    run.initial_train_loss = run_evaluate(run, run.train_loader, batches)
    stats = objective_stats(run, training=False, prefix="")
    run.initial_val_loss = run_evaluate(run, run.val_loader, batches)
    stats |= objective_stats(run, training=False, prefix="val_")
    run.say(f"Training loss: {run.initial_train_loss}")
    run.say(f"Validation loss: {run.initial_val_loss}")
    if run.info.is_main:
        run.metrics_path.unlink(missing_ok=True)
        lr = run.scheduler.get_last_lr()[0]
        log_row(run, run.initial_train_loss, run.initial_val_loss, lr, stats=stats)


# ---- train ------------------------------------------------------------------------------


def train(run: Run, progress: bool = True) -> None:
    """Optimizer steps up to `total_steps`. On Ctrl-C or SIGTERM: finish the step, save a
    checkpoint, raise KeyboardInterrupt or `Terminated` (every rank stops at the same step)."""
    position = run.position
    stop = StopRequest()
    bar = tqdm(
        total=run.total_steps,
        initial=position.step,
        desc="finetune",
        unit="step",
        disable=not (progress and run.info.is_main),
        dynamic_ncols=True,
        file=PipeSafe(sys.stderr),  # a `| tee` killed by the Ctrl-C must not cost the save
    )
    batches: Iterator | None = None
    with stop.installed(), bar:
        while position.step < run.total_steps:
            if batches is None:
                batches = open_epoch(run.train_loader, position, run.pending_rng)
                # Packing the reshuffled examples can take a batch more or less per epoch.
                run.epoch_batches, run.pending_rng = len(run.train_loader), None
            lr, stopping = optimizer_step(run, batches, stop)
            if position.batch_index >= run.epoch_batches:
                position.epoch, position.batch_index, batches = position.epoch + 1, 0, None
            bar.update(1)
            tok_s = f"{run.window.tokens_per_s:,.0f}"
            bar.set_postfix(loss=f"{run.train_loss:.3f}", lr=f"{lr:.2e}", tok_s=tok_s)
            # At the step boundary: evaluate, log, checkpoint, maybe stop.
            finished = position.step == run.total_steps
            evaluated = finished or bool(
                run.config.eval_every and position.step % run.config.eval_every == 0
            )
            run.val_loss = None
            if evaluated:
                run.val_loss = run_evaluate(run, run.val_loader, run.config.eval_batches)
                if run.info.is_main and progress:
                    bar.write(
                        f"Ep {run.epoch:.2f} (Step {position.step:06d}): "
                        f"Train loss {run.train_loss:.3f}, Val loss {run.val_loss:.3f}"
                    )
            if evaluated or position.step % run.config.log_every == 0:
                stats = objective_stats(run, training=True, prefix="")
                if evaluated:
                    stats |= objective_stats(run, training=False, prefix="val_")
                if run.info.is_main:
                    tok_s = run.window.tokens_per_s
                    log_row(run, run.window.mean_loss, run.val_loss, lr, tok_s, stats=stats)
                run.window = LossWindow()
            save_every = run.config.save_every
            if finished or stopping or (save_every and position.step % save_every == 0):
                save(run)
            if stopping:
                bar.close()
                run.say(
                    f"Interrupted: saved checkpoint step-{position.step} in "
                    f"{run.out / 'checkpoints'}; continue with --resume"
                )
                raise stop.interrupt()


def optimizer_step(run: Run, batches: Iterator, stop: StopRequest) -> tuple[float, bool]:
    """One optimizer step on the next `grad_accum` micro-batches; returns the learning rate
    it used and whether any rank asked to stop."""
    tick = time.perf_counter()  # the step's time includes collating its batches
    micro = list(itertools.islice(batches, run.config.grad_accum))
    lr = run.scheduler.get_last_lr()[0]
    local_loss, tokens, records = accumulate_gradients(
        run.train_module, micro, run.info, run.device, run.autocast, run.units
    )
    loss_sum, stop_votes = distributed.sum_across(
        [local_loss, float(stop.requested)], run.info, run.device
    )
    run.train_loss = loss_sum / max(tokens, 1.0)
    check_finite(run.train_loss, run.position.step + 1, run.checkpoints)
    if run.config.grad_clip is not None:
        params = [p for group in run.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, run.config.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)

    run.position.step += 1
    run.position.batch_index += len(micro)
    run.position.tokens_seen += int(tokens)
    run.position.records_seen += int(records)
    run.window.add(loss_sum, tokens, time.perf_counter() - tick)
    return lr, stop_votes > 0


def run_evaluate(run: Run, loader, num_batches: int) -> float:
    return evaluate(
        run.objective, loader, num_batches, run.device, run.info, run.autocast, run.units
    )


def objective_stats(run: Run, training: bool, prefix: str) -> dict[str, float]:
    """What an objective measures besides its loss since last asked (DPO: rewards, margin,
    accuracy), over all ranks: of its training steps, or of its evaluations. Every rank
    calls this at the same points."""
    take = getattr(run.objective, "take_stats", None)
    return take(training, prefix, run.info, run.device) if take is not None else {}


def log_row(
    run: Run,
    train_loss: float,
    val_loss: float | None,
    lr: float,
    tokens_per_s=None,
    stats: dict | None = None,
) -> None:
    position = run.position
    row = {
        "step": position.step,
        "epoch": round(run.epoch, 6),
        "tokens_seen": position.tokens_seen,
        "records_seen": position.records_seen,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "lr": lr,
        "tokens_per_s": tokens_per_s,
        **(stats or {}),
    }
    append_metrics(run.metrics_path, row)


def save(run: Run) -> None:
    """A resumable checkpoint, with the loss window so the next row averages the same steps."""
    run.position.counters = asdict(run.window)
    run.position.global_batch = run.config.batch_size * run.info.world_size
    # fsdp: sharded (each rank writes its part); ddp: rank 0 writes the one full copy
    write = save_sharded_checkpoint if run.config.strategy == "fsdp" else save_run_checkpoint
    write(
        run.out,
        run.position,
        run.model,
        run.optimizer,
        run.scheduler,
        run.config.keep_checkpoints,
        run.info,
    )


# ---- finish -----------------------------------------------------------------------------


def finish(run: Run) -> RunResult:
    """Save the model (LoRA merged, the loaded dropout back) and the loss plot."""
    config, model = run.config, run.model
    model_dir = run.out / "model"
    if fsdp.is_sharded(model):  # gather the shards (every rank), rank 0 saves a plain copy
        state = fsdp.full_state_dict(model)
        lora = (config.lora_rank, config.lora_alpha) if config.lora_rank else None
        model = fsdp.unsharded_copy(model, state, lora) if run.info.is_main else model
    if run.info.is_main:
        if config.lora_rank:
            save_adapter(model, run.out / "adapter.safetensors")
            merge_lora(model)
        model.eval()
        model.set_dropout(run.model_dropout)  # a training choice, not part of the saved model
        style = resolve_style(config.style, run.tokenizer).name  # None: template or alpaca
        metadata = {"style": style, "base_model": config.model}
        save_pretrained(model, run.tokenizer, model_dir, metadata=metadata)
        plot_losses(read_metrics(run.metrics_path), run.out / "loss.png")
        run.say(f"Saved the fine-tuned model to {model_dir}")
    distributed.barrier(run.info)
    return RunResult(
        out_dir=run.out,
        model_dir=model_dir,
        steps=run.position.step,
        epochs=run.epoch,
        tokens_seen=run.position.tokens_seen,
        initial_train_loss=run.initial_train_loss,
        initial_val_loss=run.initial_val_loss,
        train_loss=run.train_loss,
        val_loss=run.val_loss,
        trainable_parameters=run.trainable,
        elapsed_s=time.perf_counter() - run.started,
        model=model,
        tokenizer=run.tokenizer,
    )


def _silent(*args, **kwargs) -> None:
    pass
