"""The DPO recipe: fine-tuning's `setup` with preference pairs and the DPO objective, then
fine-tuning's own `train` and `finish`.

Only the data and the objective differ from `finetune`: pairs are tokenized with the run's
prompt style (`data.preferences`), the reference log-probabilities are computed once with
the starting model and stored in the run dir (a resumed run reads them back), and the
objective is `DPOObjective`, averaged per pair. Everything else (the run-dir rules, the
optimizer and schedule, checkpoints and exact resume, Ctrl-C, DDP, metrics.jsonl, the
HF-layout `model/`) is the same code as fine-tuning's, in `train/loop.py`.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch

from instructkit import console
from instructkit.config import DPOConfig
from instructkit.data import build_loader, split_records
from instructkit.data.preferences import PreferenceCollator, PreferenceDataset, load_preferences
from instructkit.errors import DataError
from instructkit.model.lora import count_parameters
from instructkit.train import distributed
from instructkit.train.guards import check_fingerprint, records_fingerprint
from instructkit.train.loop import (
    Run,
    RunResult,
    _silent,
    build_optimizer,
    count_steps,
    load_model,
    measure_initial_losses,
    precision_line,
    resume_from,
    run_recipe,
    train_and_val_loaders,
    use_bf16,
    wrap_for_training,
)
from instructkit.train.preference import (
    REFERENCE_FILE,
    DPOObjective,
    load_reference,
    pairs,
    reference_logps,
    save_reference,
)
from instructkit.train.rundir import check_run_dir, claim_run_dir
from instructkit.train.stopping import install_test_step_delay


def dpo(
    config: DPOConfig,
    *,
    records: list[dict] | None = None,
    tokenizer: Any = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> RunResult:
    """Preference-tune `config.model` on the pairs of `config.data` (or `records`) into
    `config.out`. `RunResult.tokens_seen` counts pairs here, the objective's units."""
    return run_recipe(setup, config, records, tokenizer, resume, overwrite, progress)


def setup(
    config: DPOConfig,
    info: distributed.Dist,
    device: torch.device,
    *,
    records: list[dict] | None,
    tokenizer: Any,
    resume: bool,
    overwrite: bool,
) -> Run:
    """As `loop.setup`, with pairs, their reference log-probabilities and the DPO objective."""
    started = time.perf_counter()
    say = console.say if info.is_main else _silent
    checkpoint = check_run_dir(config, resume, overwrite, info.world_size)
    distributed.barrier(info)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    if records is None:
        records = load_preferences(config.data)
    fingerprint = records_fingerprint(records)
    if resume:  # the same pairs, or the data position and the reference table are meaningless
        check_fingerprint(Path(config.out), fingerprint, config.data)
    train_records, val_records = load_pair_splits(config, records)
    model, tokenizer, model_dropout = load_model(config, tokenizer, device, say)
    trainable, total = count_parameters(model)
    say(f"Trainable parameters: {trainable:,} of {total:,}")
    bf16 = use_bf16(config, device)
    say(precision_line(config, device, bf16))
    train_set = PreferenceDataset(train_records, tokenizer, config.style)
    val_set = PreferenceDataset(val_records, tokenizer, train_set.style, offset=len(train_set))
    context = model.config.context_length
    collator = PreferenceCollator(
        tokenizer.eos_id, min(config.allowed_max_length or context, context)
    )
    train_loader, val_loader = train_and_val_loaders(config, info, collator, train_set, val_set)
    total_steps = count_steps(config, len(train_loader), len(train_set), info)
    optimizer, scheduler = build_optimizer(config, model, total_steps, device)
    install_test_step_delay(optimizer)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=bf16)
    if info.is_main:
        claim_run_dir(config, overwrite, fingerprint)
    distributed.barrier(info)
    reference = reference_table(config, model, collator, train_set, val_set, info, device, autocast)
    objective = DPOObjective(
        model, reference.to(device), config.beta, config.loss, config.label_smoothing
    )
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
        epoch_batches=len(train_loader),
        optimizer=optimizer,
        scheduler=scheduler,
        objective=objective,
        train_module=wrap_for_training(objective, config, info, device),
        autocast=autocast,
        units=pairs,
    )
    if checkpoint is not None:
        resume_from(run, checkpoint)
    else:
        measure_initial_losses(run)
    return run


def load_pair_splits(config: DPOConfig, records: list[dict]) -> tuple[list, list]:
    """Training and validation pairs (the test split is left for generation and judging)."""
    train_pairs, _test, val_pairs = split_records(
        records, config.split, config.seed, source=config.data
    )
    if not train_pairs or not val_pairs:
        raise DataError(
            f"{config.data}: {len(records)} pairs leave {len(train_pairs)} for training and "
            f"{len(val_pairs)} for validation; the {config.split} split needs more pairs"
        )
    return train_pairs, val_pairs


def reference_table(
    config: DPOConfig, model, collator, train_set, val_set, info, device, autocast
) -> torch.Tensor:
    """The reference log-probabilities: read from the run dir when there (a resumed run),
    else computed now with the starting model on rank 0 and stored. With LoRA the adapters'
    B = 0 start makes this the base model's."""
    path = Path(config.out) / REFERENCE_FILE
    if info.is_main and not path.exists():
        loader = build_loader(
            train_set.examples + val_set.examples,  # keys 0..N-1 in order
            collator,
            batch_size=config.batch_size,
            shuffle=False,
            num_workers=config.num_workers,
        )
        table = reference_logps(model, loader, device, autocast)
        save_reference(table, len(train_set), path)
    distributed.barrier(info)
    return load_reference(path, len(train_set), len(val_set))
