"""DPO's objective: the loss on summed response log-probabilities, and the reference ones.

`dpo_loss` is the formula (sigmoid DPO with label smoothing, or IPO); `DPOObjective` is
the module the recipe trains through (`steps.py`'s contract: `forward(batch)` returns the
batch's summed loss, `pairs` the units it is averaged over). The reference policy's
log-probabilities are computed once, before training, with the starting model
(`reference_logps`), and looked up by each pair's key, so no second model is held while
training. With LoRA the adapters start with B = 0, so the starting model *is* the base
with adapters off. Rewards, margin and accuracy are tallied as the objective runs, apart
for training and evaluation, and read by the loop when it logs (`take_stats`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from instructkit.constants import IGNORE_INDEX
from instructkit.errors import UserError
from instructkit.files import atomic_path
from instructkit.train import distributed

REFERENCE_FILE = "reference_logps.safetensors"


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
    loss: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the implicit rewards beta * (policy - reference) of each side."""
    chosen_ratio = policy_chosen - reference_chosen  # (B,)
    rejected_ratio = policy_rejected - reference_rejected  # (B,)
    logits = chosen_ratio - rejected_ratio  # (B,)
    if loss == "sigmoid":
        losses = (
            -F.logsigmoid(beta * logits) * (1 - label_smoothing)
            - F.logsigmoid(-beta * logits) * label_smoothing
        )
    elif loss == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {loss!r}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def sequence_logps(model: nn.Module, batch) -> torch.Tensor:
    """Summed log-probability of each row's target tokens (those not -100), (R,) fp32.

    The output head runs only where targets count, as `GPTModel.loss` does: response
    tokens are a fraction of a prompted row, and vocab-wide logits dominate memory.
    """
    hidden = model.hidden_states(batch.input_ids, batch.position_ids, batch.segment_ids)
    keep = batch.targets != IGNORE_INDEX  # (R, T)
    logits = model.lm_head(hidden[keep]).float()  # (N, V)
    token_logps = -F.cross_entropy(logits, batch.targets[keep], reduction="none")  # (N,)
    rows = keep.nonzero()[:, 0]  # (N,) the row of each target, row-major as hidden[keep]
    sums = torch.zeros(keep.shape[0], dtype=token_logps.dtype, device=token_logps.device)
    return sums.index_add(0, rows, token_logps)  # (R,)


def pairs(batch) -> float:
    """`DPOObjective`'s units: preference pairs."""
    return batch.num_records


class DPOObjective(nn.Module):
    """The DPO loss of a `PreferenceBatch` against stored reference log-probabilities."""

    def __init__(
        self, model: nn.Module, reference: torch.Tensor, beta: float, loss: str, smoothing: float
    ):
        super().__init__()
        self.model = model
        self.reference = reference  # (K, 2): chosen, rejected per pair key; not a parameter
        self.beta, self.loss, self.smoothing = beta, loss, smoothing
        # chosen reward, rejected reward, correct, pairs: summed since last taken
        self.tallies = {mode: torch.zeros(4, dtype=torch.float64) for mode in (True, False)}

    def forward(self, preference_batch) -> torch.Tensor:
        logps = sequence_logps(self.model, preference_batch.batch)  # (2B,)
        count = preference_batch.num_records
        reference = self.reference[preference_batch.indices]  # (B, 2)
        losses, chosen, rejected = dpo_loss(
            logps[:count],
            logps[count:],
            reference[:, 0],
            reference[:, 1],
            self.beta,
            self.loss,
            self.smoothing,
        )
        with torch.no_grad():
            step = torch.stack(
                [chosen.sum(), rejected.sum(), (chosen > rejected).sum(), chosen.new_tensor(count)]
            )
            tally = self.tallies[self.training]
            self.tallies[self.training] = tally.to(step.device) + step.double()
        return losses.sum()

    def take_stats(
        self, training: bool, prefix: str, info: distributed.Dist, device: torch.device
    ) -> dict[str, float]:
        """Mean rewards, margin and accuracy since last taken, over all ranks; then reset."""
        chosen, rejected, correct, count = distributed.sum_across(
            self.tallies[training].tolist(), info, device
        )
        self.tallies[training] = torch.zeros(4, dtype=torch.float64)
        if count == 0:
            return {}
        return {
            f"{prefix}rewards/chosen": chosen / count,
            f"{prefix}rewards/rejected": rejected / count,
            f"{prefix}margin": (chosen - rejected) / count,
            f"{prefix}accuracy": correct / count,
        }


@torch.no_grad()
def reference_logps(model: nn.Module, loader, device: torch.device, autocast) -> torch.Tensor:
    """(N, 2) summed log-probs of chosen and rejected per pair key 0..N-1 of `loader`'s
    dataset, with the model as it is now (dropout off)."""
    was_training = model.training
    model.eval()
    keys, values = [], []
    for preference_batch in loader:
        preference_batch = preference_batch.to(device)
        with autocast:
            logps = sequence_logps(model, preference_batch.batch).float()  # (2B,)
        count = preference_batch.num_records
        keys.append(preference_batch.indices.cpu())
        values.append(torch.stack([logps[:count], logps[count:]], dim=1).cpu())
    model.train(was_training)
    keys_all, values_all = torch.cat(keys), torch.cat(values)
    table = torch.full((int(keys_all.max()) + 1, 2), float("nan"))
    table[keys_all] = values_all
    return table


def save_reference(table: torch.Tensor, num_train: int, path: Path) -> None:
    """`train.chosen`/`train.rejected` (training pairs in order) and `val.*`, atomically."""
    from safetensors.torch import save_file

    tensors = {
        "train.chosen": table[:num_train, 0].contiguous(),
        "train.rejected": table[:num_train, 1].contiguous(),
        "val.chosen": table[num_train:, 0].contiguous(),
        "val.rejected": table[num_train:, 1].contiguous(),
    }
    with atomic_path(path) as temp:
        save_file(tensors, os.fspath(temp))


def load_reference(path: Path, num_train: int, num_val: int) -> torch.Tensor:
    """The stored table, checked against this run's pair counts."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(os.fspath(path))
        train = torch.stack([tensors["train.chosen"], tensors["train.rejected"]], dim=1)
        val = torch.stack([tensors["val.chosen"], tensors["val.rejected"]], dim=1)
    except (OSError, KeyError, SafetensorError) as error:
        raise UserError(f"{path}: cannot read the reference log-probabilities ({error})") from None
    if (len(train), len(val)) != (num_train, num_val):
        raise UserError(
            f"{path}: holds {len(train)} training and {len(val)} validation pairs, this run has "
            f"{num_train} and {num_val}; was the data changed since the run started?"
        )
    return torch.cat([train, val])
