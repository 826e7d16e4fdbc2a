"""What training will see in a records file: split sizes, lengths, truncation, masking, padding.

`instructkit data inspect` prints these; they are plain functions of the records and an
`InstructionDataset`, built with the same collator and loader the training loop uses, so
a notebook or a test can ask the same questions. Lengths are summarised as min, mean,
p95 (nearest rank) and max.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from instructkit import console
from instructkit.constants import IGNORE_INDEX
from instructkit.data.collate import InstructionCollator, count_untrained
from instructkit.data.conversations import is_conversation
from instructkit.data.dataset import Example, InstructionDataset
from instructkit.data.sampling import build_loader
from instructkit.data.splits import resolve_split_method, split_records

RECORD_FIELDS = ("instruction", "input", "output")
CONVERSATION_ROLES = ("system", "user", "assistant")
MASKING_CHUNK = 64  # examples collated at once when counting masked-out records


@dataclass(frozen=True)
class LengthSummary:
    min: int
    mean: float
    p95: int
    max: int

    def __str__(self) -> str:
        return f"min {self.min}, mean {self.mean:.1f}, p95 {self.p95}, max {self.max}"


def summarize(values: Sequence[int]) -> LengthSummary:
    """min/mean/p95/max of a non-empty list of lengths (p95 by nearest rank)."""
    ordered = sorted(values)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return LengthSummary(ordered[0], sum(ordered) / len(ordered), p95, ordered[-1])


@dataclass(frozen=True)
class RecordStats:
    """What the records hold before tokenization."""

    records: int
    with_input: int
    """Instruction records with a non-empty input."""
    extra_keys: list[str]
    split_method: str
    """The method `split_records` used, "auto" resolved ("field" or "book")."""
    split_sizes: tuple[int, int, int]
    """(train, test, val)."""
    characters: dict[str, LengthSummary]
    """Per record field (instruction, input, output) of instruction records, and per role
    (system, user, assistant: one value per message) of conversations."""
    conversations: int = 0
    """Records that are conversations (`messages`)."""
    turns: LengthSummary | None = None
    """Messages per conversation (None without conversations)."""


def record_stats(
    records: list[dict], method: str = "auto", seed: int = 0, source: str = "records"
) -> RecordStats:
    method = resolve_split_method(records, method)
    parts = split_records(records, method, seed, source=source)
    chats = [r["messages"] for r in records if is_conversation(r)]
    plain = [r for r in records if not is_conversation(r)]
    characters = {
        field: summarize([len(r[field]) for r in plain]) for field in RECORD_FIELDS if plain
    }
    for role in CONVERSATION_ROLES:
        lengths = [len(m["content"]) for messages in chats for m in messages if m["role"] == role]
        if lengths:
            characters[role] = summarize(lengths)
    return RecordStats(
        records=len(records),
        with_input=sum(bool(r["input"]) for r in plain),
        extra_keys=sorted({key for r in records for key in r} - {*RECORD_FIELDS, "messages"}),
        split_method=method,
        split_sizes=(len(parts[0]), len(parts[1]), len(parts[2])),
        characters=characters,
        conversations=len(chats),
        turns=summarize([len(messages) for messages in chats]) if chats else None,
    )


@dataclass(frozen=True)
class BatchingStats:
    """One way of batching the dataset: how much of each batch is real tokens."""

    name: str
    padding_efficiency: float
    """Real tokens / all tokens, over every batch."""
    batches: int
    packed: bool


@dataclass(frozen=True)
class TokenStats:
    """Token lengths and what truncation, prompt masking and batching do to them."""

    prompt_lengths: list[int]
    response_lengths: list[int]
    context_length: int
    limit: int
    """Examples are truncated to this many tokens."""
    over_context: int
    """Examples longer than the context length with their end-of-text token."""
    truncated: int
    masked_empty: int
    """Examples with no target left under mask_prompt (their prompt fills the limit)."""
    batching: list[BatchingStats]
    trained_lengths: list[int] | None = None
    """Per example, the tokens its loss mask trains (conversations and chat templates:
    the assistant turns); None when no example has a loss mask."""
    untrained: int = 0
    """Examples with a loss mask that truncation leaves with no trained token (training
    skips them whatever mask_prompt says)."""

    @property
    def total_lengths(self) -> list[int]:
        """Prompt + response + the end-of-text token."""
        return [p + r + 1 for p, r in zip(self.prompt_lengths, self.response_lengths)]

    @property
    def prompts_filling_context(self) -> list[int]:
        """Indices of records whose prompt alone leaves no room for a response."""
        return [i for i, n in enumerate(self.prompt_lengths) if n >= self.context_length]


def truncation_limit(allowed_max_length: int | None, context_length: int) -> int:
    """The length examples are cut to: allowed_max_length capped at the context, as in training."""
    return min(allowed_max_length or context_length, context_length)


def token_stats(
    dataset: InstructionDataset,
    context_length: int,
    limit: int,
    batch_size: int,
    seed: int,
    *,
    progress: bool = False,
) -> TokenStats:
    eos_id = dataset.tokenizer.eos_id
    lengths = dataset.lengths
    masking = InstructionCollator(eos_id, allowed_max_length=limit, mask_prompt=True)
    masked_empty = 0
    for start in range(0, len(dataset), MASKING_CHUNK):
        batch = masking(dataset.examples[start : start + MASKING_CHUNK])
        masked_empty += int(((batch.targets != masking.ignore_index).sum(1) == 0).sum())
    masked = [example for example in dataset.examples if example.loss_mask is not None]
    trained = [sum(example.loss_mask[1:]) for example in masked]
    return TokenStats(
        prompt_lengths=[example.prompt_length for example in dataset.examples],
        response_lengths=[len(example) - example.prompt_length for example in dataset.examples],
        context_length=context_length,
        limit=limit,
        over_context=sum(n + 1 > context_length for n in lengths),
        truncated=sum(n > limit for n in lengths),
        masked_empty=masked_empty,
        batching=batching_stats(dataset, limit, batch_size, seed, progress=progress),
        trained_lengths=trained or None,
        untrained=count_untrained(masked, limit),
    )


def batching_stats(
    dataset: InstructionDataset, limit: int, batch_size: int, seed: int, *, progress: bool = False
) -> list[BatchingStats]:
    """Padding efficiency of random, length-grouped and packed batches (one epoch each)."""
    eos_id = dataset.tokenizer.eos_id
    modes = (
        ("random", False, False),
        ("length-grouped", False, True),
        ("packed", True, False),
    )
    found = []
    for name, pack, grouped in modes:
        collator = InstructionCollator(eos_id, allowed_max_length=limit, pack=pack)
        loader = build_loader(dataset, collator, batch_size, group_by_length=grouped, seed=seed)
        batches = list(console.progress(loader, f"{name} batches", "batch", enabled=progress))
        real = sum(batch.num_real_tokens for batch in batches)
        total = sum(batch.input_ids.numel() for batch in batches)
        found.append(BatchingStats(name, real / total, len(batches), pack))
    return found


class LabelledTarget(NamedTuple):
    """One position of an example as training sees it."""

    position: int
    input_id: int
    target_id: int | None
    """None where the target is ignored (padding, or past the end-of-text token)."""
    label: str
    """'train' (always trained), 'prompt' (trained unless mask_prompt) or 'ignored'."""


def label_targets(example: Example, eos_id: int, limit: int) -> list[LabelledTarget]:
    """Each position's input token, its target, and whether the loss sees it."""
    full = InstructionCollator(eos_id, allowed_max_length=limit)([example])
    masked = InstructionCollator(eos_id, allowed_max_length=limit, mask_prompt=True)([example])
    rows = []
    for position, (token, target) in enumerate(
        zip(full.input_ids[0].tolist(), full.targets[0].tolist())
    ):
        if target == IGNORE_INDEX:
            rows.append(LabelledTarget(position, token, None, "ignored"))
        else:
            trained = masked.targets[0, position].item() != IGNORE_INDEX
            rows.append(LabelledTarget(position, token, target, "train" if trained else "prompt"))
    return rows
