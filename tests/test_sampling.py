"""Tests for batch samplers and the loader: coverage, determinism, DDP ranks, packing."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instructkit.data import (
    Batch,
    Example,
    InstructionCollator,
    InstructionDataset,
    LengthGroupedSampler,
    PackedBatchSampler,
    RandomBatchSampler,
    build_loader,
    pack_lengths,
)

_RNG = random.Random(0)
LENGTHS = [_RNG.randint(5, 120) for _ in range(203)]


def flatten(batches):
    return [index for batch in batches for index in batch]


def test_pack_lengths_first_fit_decreasing():
    assert pack_lengths([5, 2, 3, 1], 6) == [[0, 3], [2, 1]]
    assert pack_lengths([4, 4, 4], 4) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="longer than the row capacity 3"):
        pack_lengths([4], 3)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(lengths=st.lists(st.integers(1, 20), min_size=1, max_size=40), k=st.integers(1, 6))
def test_repacking_the_first_rows_reproduces_them(lengths, k):
    rows = pack_lengths(lengths, 20)
    assert sorted(flatten(rows)) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 20 for row in rows)
    chosen = sorted(flatten(rows[:k]))
    again = pack_lengths([lengths[i] for i in chosen], 20)
    assert [[chosen[i] for i in row] for row in again] == rows[:k]


@pytest.mark.parametrize("drop_last", [False, True])
def test_length_grouped_covers_each_index_once_with_similar_lengths(drop_last):
    sampler = LengthGroupedSampler(LENGTHS, batch_size=8, seed=1, drop_last=drop_last)
    batches = list(sampler)
    assert len(batches) == len(sampler) == (25 if drop_last else 26)
    seen = flatten(batches)
    assert len(seen) == len(set(seen)) == (200 if drop_last else 203)
    spread = sum(max(LENGTHS[i] for i in b) - min(LENGTHS[i] for i in b) for b in batches)
    random_batches = list(RandomBatchSampler(len(LENGTHS), 8, seed=1))
    random_spread = sum(
        max(LENGTHS[i] for i in b) - min(LENGTHS[i] for i in b) for b in random_batches
    )
    assert spread < random_spread / 5


def test_samplers_are_deterministic_per_seed_and_epoch():
    for make in (
        lambda seed: LengthGroupedSampler(LENGTHS, 8, seed=seed),
        lambda seed: RandomBatchSampler(len(LENGTHS), 8, seed=seed),
        lambda seed: PackedBatchSampler(LENGTHS, 128, 4, seed=seed),
    ):
        first, again, other = make(0), make(0), make(1)
        assert list(first) == list(again)
        assert list(first) != list(other)
        epoch_zero = list(first)
        first.set_epoch(1)
        assert list(first) != epoch_zero
        again.set_epoch(1)
        assert list(first) == list(again)


SAMPLERS = {
    "random": lambda batch, **kw: RandomBatchSampler(len(LENGTHS), batch, seed=3, **kw),
    "grouped": lambda batch, **kw: LengthGroupedSampler(LENGTHS, batch, seed=3, **kw),
    "packed": lambda batch, **kw: PackedBatchSampler(LENGTHS, 128, batch, seed=3, **kw),
}


@pytest.mark.parametrize("kind", SAMPLERS)
@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_share_the_global_batch_of_one_process(kind, drop_last):
    """3 ranks of batch 8 take, at every step, the examples 1 process of batch 24 takes."""
    make = SAMPLERS[kind]
    ranks = [list(make(8, drop_last=drop_last, rank=r, world_size=3)) for r in range(3)]
    single = list(make(24, drop_last=drop_last))
    assert [len(batches) for batches in ranks] == [len(single)] * 3
    for step, batch in enumerate(single):
        shares = [ranks[r][step] for r in range(3)]
        assert all(shares)  # no rank idles
        if kind == "packed" or step < len(single) - 1 or drop_last:
            assert sorted(i for share in shares for i in share) == sorted(batch)
        else:  # a short last batch: topped up from the epoch so every rank has an example
            assert set(batch) <= {i for share in shares for i in share}
    if kind != "packed":
        assert {len(ranks[r][0]) for r in range(3)} == {8}
    with pytest.raises(ValueError, match="rank 3 is not in 0..2"):
        RandomBatchSampler(10, 2, rank=3, world_size=3)


def test_random_sampler_without_shuffle_is_file_order():
    assert list(RandomBatchSampler(5, 2, shuffle=False)) == [[0, 1], [2, 3], [4]]
    assert list(RandomBatchSampler(5, 2, shuffle=False, drop_last=True)) == [[0, 1], [2, 3]]


def test_packed_sampler_fills_exactly_rows_per_batch():
    sampler = PackedBatchSampler(LENGTHS + [500], capacity=256, rows_per_batch=4, seed=2)
    batches = list(sampler)
    assert sorted(flatten(batches)) == list(range(len(LENGTHS) + 1))
    lengths = [min(length, 256) for length in LENGTHS + [500]]
    rows = [pack_lengths([lengths[i] for i in batch], 256) for batch in batches]
    full = [len(batch_rows) == 4 for batch_rows in rows]
    assert full.index(False) >= len(batches) - 2 and all(len(r) <= 4 for r in rows)
    positions = sum(
        len(batch_rows) * max(sum(lengths[batch[i]] for i in row) for row in batch_rows)
        for batch, batch_rows in zip(batches, rows)
    )
    assert sum(lengths) / positions > 0.95


def test_packed_sampler_last_batch_splits_short_rows_or_is_dropped():
    # Full rows of 10 first; what is left is one row of 10 and one of 3.
    lengths = [10] * 9 + [3]
    kept = list(PackedBatchSampler(lengths, 10, rows_per_batch=4, shuffle=False))
    assert kept == [[0, 1, 2, 3], [4, 5, 6, 7], [8], [9]]
    dropped = list(PackedBatchSampler(lengths, 10, rows_per_batch=4, shuffle=False, drop_last=True))
    assert dropped == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_build_loader_yields_batches_in_each_mode(example_records, small_tokenizer):
    dataset = InstructionDataset(example_records, small_tokenizer)
    eos = small_tokenizer.eos_id
    plain = build_loader(dataset, InstructionCollator(eos), batch_size=8, drop_last=True)
    batches = list(plain)
    assert len(batches) == len(plain) == 2
    assert all(isinstance(b, Batch) and b.input_ids.shape[0] == 8 for b in batches)

    grouped = list(build_loader(dataset, InstructionCollator(eos), 8, group_by_length=True))
    assert sum(b.num_records for b in grouped) == 20

    packed_loader = build_loader(
        dataset, InstructionCollator(eos, allowed_max_length=128, pack=True), batch_size=2
    )
    packed = list(packed_loader)
    assert sum(b.num_records for b in packed) == 20
    assert all(b.input_ids.shape[0] <= 2 and b.input_ids.shape[1] <= 128 for b in packed)
    packed_loader.batch_sampler.set_epoch(1)
    assert sum(b.num_records for b in packed_loader) == 20


def test_build_loader_accepts_plain_examples_and_workers():
    examples = [Example(list(range(1, n + 1)), 1) for n in (3, 5, 2, 7, 4)]
    loader = build_loader(
        examples, InstructionCollator(0), batch_size=2, shuffle=False, num_workers=1
    )
    batches = list(loader)
    assert [b.num_records for b in batches] == [2, 2, 1]
    assert batches[0].input_ids.tolist() == [[1, 2, 3, 0, 0], [1, 2, 3, 4, 5]]
