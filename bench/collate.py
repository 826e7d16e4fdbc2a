"""Benchmark: batches/s of `custom_collate_fn` against the book's per-item collate, and padding.

Run from the repo root: `python bench/collate.py` (needs ../shared/data/instruction-data.json).
On the book's training split (935 records, batch 8, shuffled, drop_last as in the book),
both functions collate the same batches, are checked to give identical tensors, and are
timed best-of-N; the ratio is the claim. Then the padding efficiency (real tokens / all
tokens) of random, length-grouped and packed batches (8 rows of 1024 tokens) from
`build_loader`. GPT-2's vocabulary is used when tiktoken can load it; offline a
byte-level BPE (8,000 tokens) trained on the records stands in, and the output says so.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from instructkit.data import (
    InstructionCollator,
    InstructionDataset,
    build_loader,
    custom_collate_fn,
    load_instructions,
    split_book,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import BOOK_DATA, build_tokenizer
from book_reference import book_collate

BATCH_SIZE = 8
ALLOWED_MAX_LENGTH = 1024
TARGET_SPEEDUP = 5.0
TARGET_PACKED_EFFICIENCY = 0.97


def tokenizer_for(records):
    return build_tokenizer(), "GPT-2 BPE (50,257 tokens)"


def batches_per_second(function, batches, eos: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            function(batch, pad_token_id=eos, allowed_max_length=ALLOWED_MAX_LENGTH)
        best = min(best, time.perf_counter() - start)
    return len(batches) / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed passes; best is kept")
    args = parser.parse_args()
    if not BOOK_DATA.exists():
        print(f"book data not found at {BOOK_DATA}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)  # tiny tensor ops: threads only add noise on a shared machine
    records = load_instructions(BOOK_DATA)
    train, _, _ = split_book(records)
    tokenizer, tokenizer_name = tokenizer_for(records)
    dataset = InstructionDataset(train, tokenizer)
    eos = tokenizer.eos_id
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(123)).tolist()
    batches = [
        [dataset[i] for i in order[start : start + BATCH_SIZE]]
        for start in range(0, len(order) - BATCH_SIZE + 1, BATCH_SIZE)
    ]
    for batch in batches:  # same tensors before timing anything
        ours = custom_collate_fn(batch, pad_token_id=eos, allowed_max_length=ALLOWED_MAX_LENGTH)
        book = book_collate(batch, pad_token_id=eos, allowed_max_length=ALLOWED_MAX_LENGTH)
        assert torch.equal(ours[0], book[0]) and torch.equal(ours[1], book[1])

    print(
        f"data: {BOOK_DATA.name}, train split {len(dataset)} records, batch {BATCH_SIZE}, "
        f"{len(batches)} batches, allowed_max_length {ALLOWED_MAX_LENGTH}"
    )
    print(f"tokenizer: {tokenizer_name}")
    book_rate = batches_per_second(book_collate, batches, eos, args.repeats)
    ours_rate = batches_per_second(custom_collate_fn, batches, eos, args.repeats)
    collator = InstructionCollator(eos, allowed_max_length=ALLOWED_MAX_LENGTH)
    examples = [
        [dataset.examples[i] for i in order[s : s + BATCH_SIZE]]
        for s in range(0, len(order) - BATCH_SIZE + 1, BATCH_SIZE)
    ]
    start = time.perf_counter()
    for _ in range(args.repeats):
        for batch in examples:
            collator(batch)
    collator_rate = len(examples) * args.repeats / (time.perf_counter() - start)
    speedup = ours_rate / book_rate
    print(f"book per-item collate (reference): {book_rate:10.0f} batches/s")
    print(
        f"custom_collate_fn (vectorized):    {ours_rate:10.0f} batches/s   "
        f"{speedup:.1f}x the reference (target >= {TARGET_SPEEDUP:.0f}x)"
    )
    print(f"InstructionCollator (plain):       {collator_rate:10.0f} batches/s   (mean of passes)")

    print(f"padding efficiency, real tokens / all tokens, batch {BATCH_SIZE}, one epoch:")
    modes = {
        "random": (InstructionCollator(eos, allowed_max_length=ALLOWED_MAX_LENGTH), False),
        "length-grouped": (InstructionCollator(eos, allowed_max_length=ALLOWED_MAX_LENGTH), True),
        "packed": (
            InstructionCollator(eos, allowed_max_length=ALLOWED_MAX_LENGTH, pack=True),
            False,
        ),
    }
    efficiency = {}
    for name, (mode_collator, grouped) in modes.items():
        loader = build_loader(dataset, mode_collator, BATCH_SIZE, group_by_length=grouped)
        epoch = list(loader)
        real = sum(batch.num_real_tokens for batch in epoch)
        total = sum(batch.input_ids.numel() for batch in epoch)
        efficiency[name] = real / total
        rows = f"rows of up to {ALLOWED_MAX_LENGTH} tokens" if mode_collator.pack else "records"
        print(
            f"  {name + ':':16}{efficiency[name]:.3f}  ({len(epoch)} batches of {BATCH_SIZE} "
            f"{rows}, {total} positions for {real} tokens)"
        )
    met = speedup >= TARGET_SPEEDUP and efficiency["packed"] >= TARGET_PACKED_EFFICIENCY
    print(
        f"targets (>= {TARGET_SPEEDUP:.0f}x, packed >= {TARGET_PACKED_EFFICIENCY}): "
        f"{'met' if met else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
