"""Train/test/validation splits: the book's file-order 85/10/5 split, a seeded shuffle,
or the split each record names in its own `split` field.

All return `(train, test, val)` in that order, as the book does (section 7.2), so code
written against the book unpacks them unchanged.
"""

from __future__ import annotations

import random
from typing import TypeVar

from instructkit.config import SPLIT_METHODS, SPLIT_NAMES
from instructkit.errors import DataError, UserError

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


def split_by_field(records: list[dict], source: str = "records") -> tuple[list, list, list]:
    """Each record's own `split` field ("train", "test" or "val") decides; file order is kept.

    Pre-split data (the built-in dataset, an export of a dataset with splits) keeps exactly
    the split it was made with, whatever its proportions.
    """
    parts: dict[str, list] = {name: [] for name in SPLIT_NAMES}
    problems = []
    for number, record in enumerate(records, start=1):
        name = record.get("split")
        if name in parts:
            parts[name].append(record)
        else:
            problems.append(
                f"{source}: record {number}: field 'split' is {name!r}, "
                f"expected one of {', '.join(SPLIT_NAMES)}"
            )
    if problems:
        raise DataError(problems)
    return parts["train"], parts["test"], parts["val"]


def resolve_split_method(records: list[dict], method: str = "auto") -> str:
    """`method`, with "auto" made "field" when every record names its split, else "book"."""
    if method != "auto":
        return method
    return "field" if records and all("split" in r for r in records) else "book"


def split_records(
    records: list[dict], method: str = "auto", seed: int = 0, source: str = "records"
) -> tuple[list, list, list]:
    """(train, test, val) by `method`, one of SPLIT_METHODS; `source` names the file in errors."""
    method = resolve_split_method(records, method)
    if method == "field":
        return split_by_field(records, source)
    if method == "shuffled":
        return split_shuffled(records, seed=seed)
    if method == "book":
        return split_book(records)
    raise UserError(f"split: {method!r} is not one of {', '.join(SPLIT_METHODS)}")
