"""Tests for splits: the book's 85/10/5 split, the seeded shuffle and each record's split field."""

from __future__ import annotations

import pytest

from instructkit.data import split_book, split_by_field, split_records, split_shuffled
from instructkit.errors import DataError, UserError


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


def test_split_field_keeps_each_record_where_it_says_in_file_order():
    records = [{"id": i, "split": name} for i, name in enumerate(["val", "train", "test", "train"])]
    train, test, val = split_by_field(records)
    assert [r["id"] for r in train] == [1, 3]
    assert [r["id"] for r in test] == [2] and [r["id"] for r in val] == [0]


def test_split_field_names_the_file_record_and_value_of_every_bad_record():
    records = [{"split": "train"}, {"split": "dev"}, {}]
    with pytest.raises(DataError) as error:
        split_by_field(records, "data.json")
    assert error.value.problems == [
        "data.json: record 2: field 'split' is 'dev', expected one of train, test, val",
        "data.json: record 3: field 'split' is None, expected one of train, test, val",
    ]


def test_auto_uses_split_fields_only_when_every_record_has_one():
    named = [{"id": i, "split": "test" if i == 0 else "train"} for i in range(20)]
    assert split_records(named)[1] == named[:1]
    partly = named[:19] + [{"id": 19}]
    assert split_records(partly) == split_book(partly)
    assert split_records(named, "book") == split_book(named)
    assert split_records(named, "shuffled", seed=3) == split_shuffled(named, seed=3)
