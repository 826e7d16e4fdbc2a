"""Tests for splits: the book's file-order 85/10/5 split and the seeded shuffled split."""

from __future__ import annotations

import pytest

from instructkit.data import split_book, split_shuffled
from instructkit.errors import UserError


def test_book_split_on_1100_records_matches_the_book():
    records = list(range(1100))
    train, test, val = split_book(records)
    assert (len(train), len(test), len(val)) == (935, 110, 55)
    assert train == records[:935] and test == records[935:1045] and val == records[1045:]


@pytest.mark.parametrize("n", [0, 1, 7, 19, 20, 101])
def test_book_split_covers_everything_in_order(n):
    records = list(range(n))
    train, test, val = split_book(records)
    assert train + test + val == records
    assert len(train) == int(n * 0.85) and len(test) == int(n * 0.1)


def test_shuffled_split_is_seeded_and_a_partition():
    records = list(range(200))
    first = split_shuffled(records, (0.8, 0.1, 0.1), seed=3)
    assert first == split_shuffled(records, (0.8, 0.1, 0.1), seed=3)
    assert first != split_shuffled(records, (0.8, 0.1, 0.1), seed=4)
    train, test, val = first
    assert (len(train), len(test), len(val)) == (160, 20, 20)
    assert sorted(train + test + val) == records
    assert records == list(range(200))  # input not shuffled in place


def test_shuffled_split_rejects_bad_fractions():
    with pytest.raises(UserError, match="sum to 1"):
        split_shuffled(list(range(10)), (0.5, 0.1, 0.1))
    with pytest.raises(UserError, match="non-negative"):
        split_shuffled(list(range(10)), (1.2, -0.1, -0.1))
