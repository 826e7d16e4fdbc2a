"""Self-test: packing must not change what the model computes for any example.

Packed rows put several examples side by side, with position ids that restart in each
example and segment ids that keep attention inside it. If any of that were wrong, an
example would see its neighbours and its logits would differ from the same example
padded alone in its row. `check_packing` runs both layouts through a model and compares
every example's logits and the batch loss; `instructkit data inspect --check-packing`
runs it on a user's own data and model. It lives with the data because it tests the
collator's packing; the model is only an argument, so `model/` needs nothing from `data/`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from instructkit.constants import IGNORE_INDEX
from instructkit.data.collate import Batch, InstructionCollator
from instructkit.data.dataset import Example

TOLERANCE = 1e-4


@dataclass
class PackingCheck:
    examples: int
    packed_rows: int
    max_logit_difference: float
    loss_padded: float
    loss_packed: float
    positions_restart: bool = True
    """Whether the packed rows' position ids start at 0 in every example (RoPE models see
    positions only through them)."""

    @property
    def passed(self) -> bool:
        return (
            self.positions_restart
            and self.max_logit_difference <= TOLERANCE
            and abs(self.loss_padded - self.loss_packed) <= TOLERANCE * max(1.0, self.loss_padded)
        )


def example_logits(model: torch.nn.Module, batch: Batch) -> dict[tuple[int, ...], torch.Tensor]:
    """Each example's logits keyed by its input ids, read out of padded or packed rows."""
    logits = model(batch.input_ids, batch.position_ids, batch.segment_ids)  # (B, T, V)
    found: dict[tuple[int, ...], torch.Tensor] = {}
    targets_kept = batch.targets != IGNORE_INDEX
    for row in range(batch.input_ids.shape[0]):
        if batch.segment_ids is None:
            # a padded row holds one example: its tokens up to its end-of-text target
            ends = targets_kept[row].nonzero()
            spans = [torch.arange(int(ends[-1]) + 1)] if len(ends) else []
        else:
            segments = batch.segment_ids[row]
            spans = [(segments == s).nonzero().squeeze(1) for s in segments.unique() if s > 0]
        for span in spans:
            found[tuple(batch.input_ids[row, span].tolist())] = logits[row, span]
    return found


@torch.no_grad()
def check_packing(
    model: torch.nn.Module,
    examples: Sequence[Example],
    pad_token_id: int,
    max_length: int,
) -> PackingCheck:
    """Compare packed and padded layouts of `examples` (no prompt masking, so every
    target counts). Examples are cut to half of `max_length` so every packed row holds
    at least two of them: the case where attention could leak."""
    model.eval()
    half = max(1, max_length // 2)
    examples = [Example(e.input_ids[:half], min(e.prompt_length, half)) for e in examples]
    padded = InstructionCollator(pad_token_id, allowed_max_length=max_length)(examples)
    packed = InstructionCollator(pad_token_id, allowed_max_length=max_length, pack=True)(examples)
    alone, together = example_logits(model, padded), example_logits(model, packed)
    difference = max(
        float((alone[ids] - together[ids]).abs().max()) for ids in alone if ids in together
    )
    if set(alone) != set(together):
        difference = float("inf")  # an example went missing or was cut differently
    return PackingCheck(
        examples=len(examples),
        packed_rows=packed.input_ids.shape[0],
        max_logit_difference=difference,
        loss_padded=float(model.loss(padded.input_ids, padded.targets)),
        loss_packed=float(
            model.loss(packed.input_ids, packed.targets, packed.position_ids, packed.segment_ids)
        ),
        positions_restart=positions_restart(packed),
    )


def positions_restart(batch: Batch) -> bool:
    """Every packed example's position ids are 0, 1, ..., its length - 1."""
    for row in range(batch.input_ids.shape[0]):
        segments = batch.segment_ids[row]
        for segment in segments.unique():
            if segment > 0:
                positions = batch.position_ids[row][segments == segment]
                if not torch.equal(positions, torch.arange(len(positions))):
                    return False
    return True
