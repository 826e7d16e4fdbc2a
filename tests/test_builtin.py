"""Tests for the built-in dataset: size, schema, splits that share no item, correct answers."""

from __future__ import annotations

import json
import os
import re
from collections import Counter

import pytest

from instructkit.data import builtin
from instructkit.data.builtin import (
    FAMILY_NAMES,
    builtin_records,
    builtin_splits,
    underlying_item,
    write_builtin,
)
from instructkit.data.records import load_instructions
from instructkit.data.splits import split_records
from instructkit.errors import UserError


@pytest.fixture(scope="module")
def splits():
    return builtin_splits(0)


@pytest.fixture(scope="module")
def records(splits):
    train, test, val = splits
    return train + test + val


def item_text(record: dict) -> str:
    return record["input"] or record["instruction"].rsplit(": ", 1)[1]


def phrase(record: dict) -> str:
    return (
        record["instruction"].rsplit(": ", 1)[0] if not record["input"] else record["instruction"]
    )


def test_same_seed_same_records_and_other_seed_differs():
    assert builtin_splits(0) == builtin_splits(0)
    assert builtin_splits(1) != builtin_splits(0)


def test_size_families_and_split_sizes(splits, records):
    train, test, val = splits
    assert len(records) >= 1000
    families = Counter(record["family"] for record in records)
    assert set(families) == set(FAMILY_NAMES) and len(families) >= 8
    assert min(families.values()) >= 100
    n_families = len(FAMILY_NAMES)
    assert (len(train), len(test), len(val)) == (
        builtin.TRAIN_PER_FAMILY * n_families,
        builtin.TEST_PER_FAMILY * n_families,
        builtin.VAL_PER_FAMILY * n_families,
    )
    for name, part in zip(("train", "test", "val"), splits):
        assert {record["split"] for record in part} == {name}
    for split in splits:
        assert set(Counter(r["family"] for r in split)) == set(FAMILY_NAMES)


def test_about_a_third_use_input_and_every_family_has_three_phrasings(records):
    with_input = sum(1 for record in records if record["input"])
    assert 0.25 < with_input / len(records) < 0.42
    by_family: dict[str, set[str]] = {}
    for record in records:
        by_family.setdefault(record["family"], set()).add(phrase(record).rstrip(".?"))
    for family, phrases in by_family.items():
        assert len(phrases) >= 3, family
    assert all(record["input"] for record in records if record["instruction"].endswith((".", "?")))


def test_records_are_valid_per_load_instructions(tmp_path, records):
    path = tmp_path / "builtin.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    loaded = load_instructions(path)
    assert loaded == records
    for record in loaded:
        assert set(record) == {"instruction", "input", "output", "family", "split"}
        assert record["instruction"].strip() and record["output"].strip()
        assert record["output"] == record["output"].strip()


def test_test_and_val_items_never_occur_in_train(splits):
    train, test, val = splits
    train_items = {underlying_item(record) for record in train}
    for record in test + val:
        assert underlying_item(record) not in train_items, record

    # Independently of `underlying_item`: no held-out word (letters joined up) or set of
    # numbers or words occurs as the item of any training record, whatever the family.
    def key(record):
        text = item_text(record)
        return tuple(sorted(text.split(", "))) if "," in text else text.replace(" ", "")

    train_keys = {key(r) for r in train}
    train_prompts = {(r["instruction"], r["input"]) for r in train}
    for record in test + val:
        assert (record["instruction"], record["input"]) not in train_prompts
        assert key(record) not in train_keys, record


def test_test_and_val_share_no_item(splits):
    _, test, val = splits
    assert not {underlying_item(r) for r in test} & {underlying_item(r) for r in val}
    for split in (test, val):
        by_family = Counter((r["family"], underlying_item(r)) for r in split)
        assert max(by_family.values()) == 1


def test_spelling_corrections_are_known_words_one_edit_away(splits):
    train, test, _ = splits
    trained_answers = {r["output"] for r in train if r["family"] == "spelling"}
    for record in train + test:
        if record["family"] != "spelling":
            continue
        typo, word = item_text(record), record["output"]
        assert typo != word and typo[0] == word[0]
        assert one_edit(typo, word), (typo, word)
        if record in test:  # held-out misspellings of words training has seen
            assert word in trained_answers


def one_edit(typo: str, word: str) -> bool:
    if len(typo) == len(word) + 1:
        return any(typo[:i] + typo[i + 1 :] == word for i in range(len(typo)))
    if len(typo) == len(word) - 1:
        return any(word[:i] + word[i + 1 :] == typo for i in range(len(word)))
    diffs = [i for i in range(len(word)) if typo[i] != word[i]]
    return len(diffs) == 2 and diffs[1] == diffs[0] + 1 and typo[diffs[0]] == word[diffs[1]]


NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
NUMBER_WORDS += ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen"]
NUMBER_WORDS += ["seventeen", "eighteen", "nineteen"]
WORD_VALUES = dict(zip(NUMBER_WORDS, range(20)))
WORD_VALUES.update(
    (word, 20 + 10 * i)
    for i, word in enumerate(
        ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
    )
)


def words_value(text: str) -> int:
    """Read 'three hundred forty-seven' back as 347."""
    total = 0
    for part in re.split(r"[ -]", text):
        total = total * 100 if part == "hundred" else total + WORD_VALUES[part]
    return total


def expected(record: dict) -> str | None:
    """The answer recomputed without the module's code; None for families checked elsewhere."""
    family, item, asked = record["family"], item_text(record), phrase(record).lower()
    if family == "reverse":
        return " ".join(item.split()[::-1])
    if family == "sort_letters":
        return " ".join(sorted(item.split()))
    numbers = [int(n) for n in re.findall(r"\d+", item)]
    if family == "sort":
        return ", ".join(map(str, sorted(numbers)))
    if family == "largest_smallest":
        biggest = any(word in asked for word in ("largest", "biggest", "highest"))
        return str(max(numbers) if biggest else min(numbers))
    if family == "next_number":
        assert len(numbers) == 1
        return str(numbers[0] + 1)
    words = [w.strip() for w in item.split(",")]
    if family == "count":
        return str(len(words))
    if family == "first_last":
        return words[0] if "first" in asked else words[-1]
    if family == "plural":
        if re.search(r"[^aeiou]y$", item):
            return item[:-1] + "ies"
        return item + ("es" if re.search(r"(s|x|z|ch|sh)$", item) else "s")
    if family == "past_tense":
        if re.search(r"[^aeiou]y$", item):
            return item[:-1] + "ied"
        return item + ("d" if item.endswith("e") else "ed")
    return None  # number_words and spelling


def test_answers_are_correct(records):
    checked = Counter()
    for record in records:
        answer = expected(record)
        if answer is not None:
            assert record["output"] == answer, record
            checked[record["family"]] += 1
        if record["family"] == "number_words":
            assert words_value(record["output"]) == int(item_text(record)), record
            checked["number_words"] += 1
    assert set(checked) == set(FAMILY_NAMES) - {"spelling"}


def test_known_word_forms():
    assert [builtin.plural(w) for w in ("cat", "box", "church", "city", "boy", "wish")] == [
        "cats",
        "boxes",
        "churches",
        "cities",
        "boys",
        "wishes",
    ]
    assert [builtin.past_tense(w) for w in ("walk", "bake", "cry", "play", "fix")] == [
        "walked",
        "baked",
        "cried",
        "played",
        "fixed",
    ]
    assert [builtin.number_words(n) for n in (0, 7, 13, 40, 47, 100, 502, 999)] == [
        "zero",
        "seven",
        "thirteen",
        "forty",
        "forty-seven",
        "one hundred",
        "five hundred two",
        "nine hundred ninety-nine",
    ]


def test_word_lists_have_no_duplicates_or_irregular_forms():
    for words in (builtin.WORDS, builtin.NOUNS, builtin.VERBS, builtin.SPELLING_WORDS):
        assert len(words) == len(set(words))
        assert all(w.isalpha() and w.islower() for w in words)
    assert not {"man", "child", "mouse", "leaf", "wolf", "sheep", "fish"} & set(builtin.NOUNS)
    assert not {"go", "run", "stop", "plan", "eat", "see"} & set(builtin.VERBS)
    assert all(3 <= len(w) <= 5 for w in builtin.WORDS)


def test_file_splits_back_by_its_split_field(splits):
    records = builtin_records(0)
    assert records == splits[0] + splits[1] + splits[2]
    assert split_records(records) == splits  # auto: every record names its split


def test_made_up_training_words_follow_the_rules_and_are_no_real_word(splits):
    train, test, _val = splits
    real = set(builtin.WORDS) | set(builtin.NOUNS) | set(builtin.VERBS)
    made_up = {r["input"] or item_text(r) for r in train if r["family"] in ("plural", "past_tense")}
    made_up -= real
    assert len(made_up) > 1000
    for record in train:
        word = item_text(record)
        if record["family"] == "past_tense" and word not in real:
            # never a short vowel and one consonant, which English doubles (stop -> stopped)
            assert not re.search(r"[^aeiou][aeiou][bdgklmnprt]$", word), word
    assert all(item_text(r) in real for r in test if r["family"] in ("plural", "past_tense"))


def test_write_builtin_writes_valid_json(tmp_path):
    path = tmp_path / "sub" / "builtin.json"
    count = write_builtin(path, seed=3)
    assert count == len(builtin_records(3))
    assert json.loads(path.read_text(encoding="utf-8")) == builtin_records(3)
    assert load_instructions(path) == builtin_records(3)
    assert os.listdir(path.parent) == ["builtin.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_builtin_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "builtin.json"
    path.write_text("old", encoding="utf-8")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(UserError, match="builtin.json"):
        write_builtin(path)
    assert path.read_text(encoding="utf-8") == "old"
    assert os.listdir(tmp_path) == ["builtin.json"]


def test_write_builtin_to_a_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path)):
        write_builtin(tmp_path)
