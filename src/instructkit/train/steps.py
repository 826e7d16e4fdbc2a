"""One optimizer step's gradients and the held-out loss, for any objective.

An objective is a module whose `forward(batch)` returns the batch's *summed* loss, plus a
`units(batch)` count that sum is averaged over: target tokens for supervised
fine-tuning (`LossModule`, `target_tokens`); preference pairs for a preference loss.
`accumulate_gradients` divides every micro-batch's sum by the units of the whole step on
all ranks, so k accumulated micro-batches give the gradient of one k-times batch and
padding or masked prompts never dilute the loss (the book and LitGPT average per
micro-batch instead). Training calls the objective module rather than the model so DDP
and torch.compile wrap the real work.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from instructkit.train import distributed

Units = Callable[[Any], float]


class LossModule(nn.Module):
    """Supervised fine-tuning's objective: the summed cross entropy of the target tokens."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch) -> torch.Tensor:
        return self.model.loss(
            batch.input_ids, batch.targets, batch.position_ids, batch.segment_ids, reduction="sum"
        )


def target_tokens(batch) -> float:
    """`LossModule`'s units: the targets that are not ignored."""
    return batch.num_target_tokens


def accumulate_gradients(
    train_module: nn.Module,
    micro: list,
    info: distributed.Dist,
    device: torch.device,
    autocast,
    units: Units = target_tokens,
) -> tuple[float, float, float]:
    """Backward over one optimizer step's micro-batches; the gradient is that of the mean
    loss per unit over the whole step on all ranks.

    The step's units are counted first (summed over ranks), each micro-batch's summed loss
    is divided by that count, and DDP's (or FSDP's) averaging over ranks is undone by
    `world_size`; DDP gradients sync once, on the last micro-batch. Returns this rank's loss sum, and the
    global unit and record counts.
    """
    local_units = sum(units(batch) for batch in micro)
    local_records = sum(batch.num_records for batch in micro)
    step_units, step_records = distributed.sum_across([local_units, local_records], info, device)
    scale = info.world_size / max(step_units, 1.0)
    loss_sum = torch.zeros((), device=device)
    train_module.train()
    for i, batch in enumerate(micro):
        batch = batch.to(device)
        last = i == len(micro) - 1
        # DDP syncs on the last micro-batch only; FSDP (no `no_sync`) reduce-scatters each.
        skip_sync = not last and hasattr(train_module, "no_sync")
        sync = train_module.no_sync() if skip_sync else contextlib.nullcontext()
        with sync:
            with autocast:
                batch_loss = train_module(batch)
            (batch_loss * scale).backward()
        loss_sum += batch_loss.detach().float()
    return loss_sum.item(), step_units, step_records


@torch.no_grad()
def evaluate(
    objective: nn.Module,
    loader: Iterable,
    num_batches: int,
    device: torch.device,
    info: distributed.Dist,
    autocast,
    units: Units = target_tokens,
) -> float:
    """Mean loss per unit over the first `num_batches` batches (all ranks)."""
    objective.eval()
    loss_sum, count = 0.0, 0.0
    for batch in itertools.islice(loader, num_batches):
        batch = batch.to(device)
        with autocast:
            loss = objective(batch)
        loss_sum += loss.item()
        count += units(batch)
    loss_sum, count = distributed.sum_across([loss_sum, count], info, device)
    objective.train()
    return loss_sum / max(count, 1.0)
