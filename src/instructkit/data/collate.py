"""Stage 2b: token id lists to training batches (the book's section 7.3, and what came after).

`custom_collate_fn` gives exactly the book's `(inputs, targets)` tensors, built with a few
whole-batch tensor operations instead of a Python loop per example. `InstructionCollator`
adds what the book leaves as exercises and what the field learned since: no loss on the
prompt (exercise 7.2), truncation that keeps the end-of-text target, padding to a multiple,
and packing several examples into one row with position ids that restart in each example
and segment ids that keep attention inside it. It returns a `Batch`.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from itertools import chain

import torch

from instructkit.constants import IGNORE_INDEX
from instructkit.data.dataset import Example
from instructkit.data.sampling import pack_lengths


def custom_collate_fn(
    batch: Sequence[Sequence[int]],
    pad_token_id: int = 50256,
    ignore_index: int = IGNORE_INDEX,
    allowed_max_length: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The book's collate: end-of-text padding, targets shifted by one, padding ignored.

    Each example gets one end-of-text token (`pad_token_id`) and is padded with it to the
    batch's longest example + 1; inputs drop the last column, targets the first; every
    target after an example's end-of-text is `ignore_index`; then both are cut to
    `allowed_max_length`. One difference from the book: padding is found by position, not
    by value. The book ignores every target equal to `pad_token_id` after the first, so an
    end-of-text id written inside an example's text would lose its loss; here it stays a
    target. For text without that id the tensors are identical to the book's.
    """
    lengths = _long_tensor(map(len, batch))  # (B,)
    width = max(map(len, batch)) + 1
    real = torch.arange(width) < lengths[:, None]  # (B, T+1): text positions
    padded = torch.full((len(batch), width), pad_token_id, dtype=torch.long)  # (B, T+1)
    padded.masked_scatter_(real, _long_tensor(list(chain.from_iterable(batch))))
    inputs = padded[:, :-1].contiguous()  # (B, T)
    # Shift +1 to the right for targets; target len(item)-1 is the end-of-text, and every
    # position after it (not a text position in inputs) is padding.
    targets = padded[:, 1:].contiguous().masked_fill_(~real[:, :-1], ignore_index)  # (B, T)
    if allowed_max_length is not None:
        inputs = inputs[:, :allowed_max_length]
        targets = targets[:, :allowed_max_length]
    return inputs.to(device), targets.to(device)


def _long_tensor(values: Iterable[int]) -> torch.Tensor:
    """A 1-D int64 tensor from Python ints, several times faster than `torch.tensor(list)`."""
    buffer = array("q", values)
    if not buffer:
        return torch.empty(0, dtype=torch.long)
    return torch.frombuffer(buffer, dtype=torch.long)


@dataclass
class Batch:
    """A training batch; iterating gives `(input_ids, targets)` like the book's collate.

    `position_ids`/`segment_ids` are set only for packed rows (segments 1..k per example,
    0 on padding). `num_records` counts examples, `num_truncated` those cut to the maximum
    length, `num_real_tokens` the non-padding positions of `input_ids`, `num_untrained`
    the examples left without a single trained target (truncation cut every trained token).
    """

    input_ids: torch.Tensor  # (B, T) long
    targets: torch.Tensor  # (B, T) long, ignore_index where no loss
    position_ids: torch.Tensor | None = None  # (B, T) long
    segment_ids: torch.Tensor | None = None  # (B, T) long
    num_records: int = 0
    num_truncated: int = 0
    num_real_tokens: int = 0
    num_untrained: int = 0

    @property
    def num_target_tokens(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())

    @property
    def padding_efficiency(self) -> float:
        """Real tokens / all positions: how much of the batch's compute is not padding."""
        return self.num_real_tokens / max(1, self.input_ids.numel())

    def to(self, device: str | torch.device, non_blocking: bool = False) -> Batch:
        return self._map(lambda tensor: tensor.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Lets a DataLoader with `pin_memory=True` pin this batch."""
        return self._map(lambda tensor: tensor.pin_memory())

    def _map(self, function) -> Batch:
        values = {}
        for field in fields(self):
            value = getattr(self, field.name)
            values[field.name] = function(value) if isinstance(value, torch.Tensor) else value
        return Batch(**values)

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield self.input_ids
        yield self.targets


class InstructionCollator:
    """Examples to a `Batch`, with prompt masking, end-of-text-keeping truncation and packing.

    Every example is `input_ids + [eos]` shifted by one, as in the book (`pad_token_id` is
    the end-of-text id). With `allowed_max_length`, a longer example keeps its first
    `allowed_max_length` tokens and still ends with an end-of-text target (the book's cut
    drops it). With `mask_prompt`, targets that predict prompt tokens are ignored; if
    truncation cut the response away entirely, the whole example is ignored rather than
    teaching an empty answer (counted in `Batch.num_untrained`). An example with a
    `loss_mask` (a conversation) trains exactly the tokens its mask marks, whatever
    `mask_prompt` says, and never its end-of-text target. With `pack`, examples are placed first-fit-decreasing into
    rows of `allowed_max_length` tokens (the longest example's length when None); targets
    never cross from one example into the next.
    """

    def __init__(
        self,
        pad_token_id: int,
        ignore_index: int = IGNORE_INDEX,
        allowed_max_length: int | None = None,
        mask_prompt: bool = False,
        pack: bool = False,
        pad_to_multiple_of: int | None = None,
    ):
        if allowed_max_length is not None and allowed_max_length < 1:
            raise ValueError("allowed_max_length must be at least 1")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError("pad_to_multiple_of must be at least 1")
        self.pad_token_id = pad_token_id
        self.ignore_index = ignore_index
        self.allowed_max_length = allowed_max_length
        self.mask_prompt = mask_prompt
        self.pack = pack
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, batch: Sequence[Example | Sequence[int]]) -> Batch:
        examples = [item if isinstance(item, Example) else Example(list(item), 0) for item in batch]
        if not examples or any(len(example.input_ids) == 0 for example in examples):
            raise ValueError("every example needs at least one token")
        limit = self.allowed_max_length
        kept = [
            len(e.input_ids) if limit is None else min(len(e.input_ids), limit) for e in examples
        ]
        num_truncated = sum(k < len(e.input_ids) for k, e in zip(kept, examples))
        if self.pack:
            rows = pack_lengths(kept, limit if limit is not None else max(kept))
        else:
            rows = [[index] for index in range(len(examples))]
        order = [index for row in rows for index in row]

        lengths = _long_tensor(kept[i] for i in order)  # (N,) examples in row order
        ids = _long_tensor(
            list(chain.from_iterable(examples[i].input_ids[: kept[i]] for i in order))
        )  # (S,) all kept tokens, example after example
        ends = lengths.cumsum(0) - 1  # (N,) last token of each example
        starts = ends - lengths + 1  # (N,)
        targets = torch.empty_like(ids)  # (S,)
        targets[:-1] = ids[1:]  # shift +1 within the stream...
        targets[ends] = self.pad_token_id  # ...but each example's last target is end-of-text
        positions = torch.arange(len(ids)) - torch.repeat_interleave(starts, lengths)  # (S,)
        if self.mask_prompt:
            masked = _long_tensor(
                _masked_targets(examples[i], kept[i]) if examples[i].loss_mask is None else 0
                for i in order
            )
            targets[positions < torch.repeat_interleave(masked, lengths)] = self.ignore_index
        if any(examples[i].loss_mask is not None for i in order):
            trained = _bool_tensor(
                chain.from_iterable(_mask_targets(examples[i], kept[i]) for i in order)
            )  # (S,)
            targets[~trained] = self.ignore_index

        row_lengths = _long_tensor(sum(kept[i] for i in row) for row in rows)  # (B,)
        width = int(row_lengths.max())
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        real = torch.arange(width) < row_lengths[:, None]  # (B, T)
        input_ids = torch.full(real.shape, self.pad_token_id, dtype=torch.long)  # (B, T)
        input_ids[real] = ids
        target_rows = torch.full(real.shape, self.ignore_index, dtype=torch.long)  # (B, T)
        target_rows[real] = targets
        position_ids = segment_ids = None
        if self.pack:
            position_ids = torch.zeros(real.shape, dtype=torch.long)  # (B, T)
            position_ids[real] = positions
            slots = _long_tensor(slot + 1 for row in rows for slot in range(len(row)))  # (N,)
            segment_ids = torch.zeros(real.shape, dtype=torch.long)  # (B, T), 0 = padding
            segment_ids[real] = torch.repeat_interleave(slots, lengths)
        return Batch(
            input_ids=input_ids,
            targets=target_rows,
            position_ids=position_ids,
            segment_ids=segment_ids,
            num_records=len(examples),
            num_truncated=num_truncated,
            num_real_tokens=len(ids),
            num_untrained=sum(
                _untrained(examples[i], kept[i], self.mask_prompt) for i in range(len(examples))
            ),
        )


def count_untrained(
    examples: Iterable[Example], allowed_max_length: int | None, mask_prompt: bool = False
) -> int:
    """How many examples keep no trained target once cut to `allowed_max_length` tokens.

    The collator counts the same per batch (`Batch.num_untrained`); this lets a run report
    the whole dataset's count before training starts.
    """
    return sum(
        _untrained(
            e,
            len(e) if allowed_max_length is None else min(len(e), allowed_max_length),
            mask_prompt,
        )
        for e in examples
    )


def _untrained(example: Example, kept: int, mask_prompt: bool) -> bool:
    if example.loss_mask is not None:
        return not any(example.loss_mask[1:kept])
    return mask_prompt and _masked_targets(example, kept) >= kept


def _masked_targets(example: Example, kept: int) -> int:
    """How many leading targets predict prompt tokens (all of them if no answer is left)."""
    if example.prompt_length >= kept and kept < len(example.input_ids):
        return kept
    return max(example.prompt_length - 1, 0)


def _mask_targets(example: Example, kept: int) -> Iterable[bool]:
    """Per kept position, whether its target is trained: the next token's mask, or for the
    last position (the end-of-text target) False when the example has a loss mask."""
    if example.loss_mask is None:
        return [True] * kept
    return [*example.loss_mask[1:kept], False]


def _bool_tensor(values: Iterable[bool]) -> torch.Tensor:
    buffer = array("b", values)
    return (
        torch.frombuffer(buffer, dtype=torch.int8).bool()
        if buffer
        else torch.empty(0, dtype=torch.bool)
    )
