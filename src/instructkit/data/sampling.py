"""Which examples share a batch: shuffled, length-grouped or packed, and the loader built on them.

Padding costs compute in proportion to the spread of lengths inside a batch. Three batch
samplers trade that against randomness; all are deterministic for a seed and epoch
(`set_epoch`), and distributed-aware: they form global batches of `batch_size *
world_size` and each rank takes its share of each one, so the examples of a step are the
same whatever the world size (2 ranks of 4 train on what 1 process of 8 does). `pack_lengths` is the greedy first-fit-decreasing
packing the collator uses; `PackedBatchSampler` picks, for each batch, examples that this
same packing places into exactly `rows_per_batch` nearly full rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Sampler

MEGABATCH_BATCHES = 50  # length grouping sorts within windows of this many batches
PACK_POOL_ROWS = 4  # the packed sampler chooses among ~this many batches' worth of examples


def pack_lengths(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit-decreasing: indices grouped into rows whose lengths sum to <= capacity.

    Ties keep input order, and rows keep their opening order, so packing the examples of
    the first k rows again reproduces exactly those k rows (the packed sampler relies on it).
    """
    if any(length > capacity for length in lengths):
        raise ValueError(f"an example is longer than the row capacity {capacity}")
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        length = lengths[index]
        for row, free in enumerate(room):
            if length <= free:
                rows[row].append(index)
                room[row] -= length
                break
        else:
            rows.append([index])
            room.append(capacity - length)
    return rows


class _EpochBatchSampler(Sampler[list[int]]):
    """Global batches for an epoch, this rank's share of each; subclasses form the batches."""

    def __init__(self, num_items: int, seed: int, drop_last: bool, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.num_items = num_items
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch` (call before each epoch, as with DistributedSampler)."""
        self.epoch = epoch

    def _permutation(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_items, generator=generator).tolist()

    def _batches(self) -> list[list[int]]:
        raise NotImplementedError

    def _rank_batches(self) -> list[list[int]]:
        batches = self._batches()
        if self.world_size == 1:
            return batches
        if batches and len(batches[-1]) < self.world_size:  # a short last batch (no drop_last)
            everything = [index for batch in batches for index in batch]
            missing = self.world_size - len(batches[-1])  # every rank gets at least one
            batches[-1] = (
                batches[-1] + (everything * math.ceil(missing / len(everything)))[:missing]
            )
        return [self._share(batch) for batch in batches]

    def _share(self, batch: list[int]) -> list[int]:
        """This rank's contiguous slice of a global batch (equal slices for a full one)."""
        size, rank = len(batch), self.rank
        return batch[size * rank // self.world_size : size * (rank + 1) // self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._rank_batches())

    def __len__(self) -> int:
        return len(self._rank_batches())


def _chunks(indices: list[int], size: int, drop_last: bool) -> list[list[int]]:
    batches = [indices[start : start + size] for start in range(0, len(indices), size)]
    if drop_last and batches and len(batches[-1]) < size:
        batches.pop()
    return batches


class RandomBatchSampler(_EpochBatchSampler):
    """Plain batches: a seeded shuffle per epoch (or file order), cut every `batch_size`."""

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(num_items, seed, drop_last, rank, world_size)
        self.batch_size = batch_size
        self.shuffle = shuffle

    def _batches(self) -> list[list[int]]:
        order = self._permutation() if self.shuffle else list(range(self.num_items))
        return _chunks(order, self.batch_size * self.world_size, self.drop_last)


class LengthGroupedSampler(_EpochBatchSampler):
    """Shuffled batches of similar length: sort within windows of 50 batches, shuffle batches.

    Examples are shuffled, cut into windows of `50 * batch_size`, sorted by length inside
    each window and cut into batches; then the order of batches is shuffled, so an epoch
    still sees lengths in random order while each batch wastes little on padding.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(len(lengths), seed, drop_last, rank, world_size)
        self.lengths = list(lengths)
        self.batch_size = batch_size

    def _batches(self) -> list[list[int]]:
        order = self._permutation()
        size = self.batch_size * self.world_size
        window = size * MEGABATCH_BATCHES
        grouped = []
        for start in range(0, len(order), window):
            grouped.extend(sorted(order[start : start + window], key=lambda i: -self.lengths[i]))
        batches = _chunks(grouped, size, self.drop_last)
        generator = torch.Generator().manual_seed(self.seed + self.epoch + 1)
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


class PackedBatchSampler(_EpochBatchSampler):
    """Batches that pack into `rows_per_batch` rows of `capacity` tokens with little padding.

    Walks the shuffled examples keeping a pool of about `PACK_POOL_ROWS` batches' worth of
    tokens; each batch is the first `rows_per_batch` rows of a first-fit-decreasing packing
    of the pool (which `pack_lengths` on that batch reproduces exactly), and the rest go
    back to the pool. Lengths above `capacity` count as `capacity` (the collator truncates).
    Long examples tend to leave the pool early in an epoch and short ones late; each
    example is still seen exactly once per epoch.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        capacity: int,
        rows_per_batch: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(len(lengths), seed, drop_last, rank, world_size)
        self.lengths = [min(length, capacity) for length in lengths]
        self.capacity = capacity
        self.rows_per_batch = rows_per_batch * world_size  # of the global batch
        self.shuffle = shuffle
        self._cache: tuple[int, list[list[int]]] | None = None

    def _batches(self) -> list[list[int]]:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        stream = self._permutation() if self.shuffle else list(range(self.num_items))
        pool_tokens = self.capacity * self.rows_per_batch * PACK_POOL_ROWS
        pool: list[int] = []
        pool_length = 0
        position = 0
        batches = []
        while position < len(stream) or pool:
            while position < len(stream) and pool_length < pool_tokens:
                pool.append(stream[position])
                pool_length += self.lengths[stream[position]]
                position += 1
            rows = pack_lengths([self.lengths[i] for i in pool], self.capacity)
            taken = sorted(slot for row in rows[: self.rows_per_batch] for slot in row)
            batches.append([pool[slot] for slot in taken])  # pool order: packs the same rows
            chosen = set(taken)
            pool = [index for slot, index in enumerate(pool) if slot not in chosen]
            pool_length = sum(self.lengths[i] for i in pool)
        if batches:
            batches[-1:] = self._finish(batches[-1])
        self._cache = (self.epoch, batches)
        return batches

    def _share(self, batch: list[int]) -> list[int]:
        """This rank's share of a global batch: whole packed rows, so every rank packs its
        examples into its `rows_per_batch` rows."""
        rows = pack_lengths([self.lengths[i] for i in batch], self.capacity)
        if len(rows) < self.world_size:
            return super()._share(batch)
        size, rank = len(rows), self.rank
        mine = rows[size * rank // self.world_size : size * (rank + 1) // self.world_size]
        return [batch[slot] for slot in sorted(slot for row in mine for slot in row)]

    def _finish(self, last: list[int]) -> list[list[int]]:
        """The epoch's last batch: dropped if short and drop_last, else split by row length.

        Its rows are whatever was left, often a few full rows and one short one; as every
        row is padded to the batch's longest, rows under half the longest go into a batch
        of their own.
        """
        rows = pack_lengths([self.lengths[i] for i in last], self.capacity)
        if self.drop_last:
            return [last] if len(rows) == self.rows_per_batch else []
        sums = [sum(self.lengths[last[slot]] for slot in row) for row in rows]
        short = {
            last[slot] for row, total in zip(rows, sums) if total < max(sums) / 2 for slot in row
        }
        if not short:
            return [last]
        return [[i for i in last if i not in short], [i for i in last if i in short]]


def build_loader(
    dataset,
    collator,
    batch_size: int,
    shuffle: bool = True,
    drop_last: bool = False,
    group_by_length: bool = False,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """The training DataLoader: yields `Batch` on the CPU (the loop moves it to the device).

    Uses the dataset's `examples` (an `InstructionDataset`) so the collator sees prompt
    lengths. With `collator.pack`, `batch_size` counts packed rows of
    `collator.allowed_max_length` tokens (the longest example when None). Call
    `loader.batch_sampler.set_epoch(epoch)` before each epoch to reshuffle.
    """
    examples = getattr(dataset, "examples", dataset)
    lengths = [len(example) for example in examples]
    if collator.pack:
        sampler: _EpochBatchSampler = PackedBatchSampler(
            lengths,
            capacity=collator.allowed_max_length or max(lengths),
            rows_per_batch=batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
        )
    elif group_by_length and shuffle:
        sampler = LengthGroupedSampler(lengths, batch_size, seed, drop_last, rank, world_size)
    else:
        sampler = RandomBatchSampler(
            len(examples), batch_size, shuffle, seed, drop_last, rank, world_size
        )
    return DataLoader(
        examples,
        batch_sampler=sampler,
        collate_fn=collator,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
