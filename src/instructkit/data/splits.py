"""Train/test/validation splits: the book's file-order 85/10/5 split and a seeded shuffle.

Both return `(train, test, val)` in that order, as the book does (section 7.2), so code
written against the book unpacks them unchanged.
"""

from __future__ import annotations

import random
from typing import TypeVar

from instructkit.errors import UserError

T = TypeVar("T")
BOOK_FRACTIONS = (0.85, 0.10, 0.05)


def split_book(records: list[T]) -> tuple[list[T], list[T], list[T]]:
    """The book's split: first int(0.85 n) train, next int(0.10 n) test, the rest val."""
    train_portion = int(len(records) * 0.85)
    test_portion = int(len(records) * 0.1)
    train = records[:train_portion]
    test = records[train_portion : train_portion + test_portion]
    val = records[train_portion + test_portion :]
    return train, test, val


def split_shuffled(
    records: list[T],
    fractions: tuple[float, float, float] = BOOK_FRACTIONS,
    seed: int = 0,
) -> tuple[list[T], list[T], list[T]]:
    """Shuffle with `seed`, then cut train and test by int(fraction n); val gets the rest."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise UserError(
            f"split fractions {tuple(fractions)} must be three non-negative numbers "
            "(train, test, val) that sum to 1"
        )
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    train_portion = int(len(shuffled) * fractions[0])
    test_portion = int(len(shuffled) * fractions[1])
    return (
        shuffled[:train_portion],
        shuffled[train_portion : train_portion + test_portion],
        shuffled[train_portion + test_portion :],
    )
