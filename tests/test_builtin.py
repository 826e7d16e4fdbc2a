"""Tests for the built-in dataset: size, schema, splits held out by what determines the
answer, test splits balanced over the classes a shortcut misses, correct answers."""

from __future__ import annotations

import json
import os
import re
from collections import Counter

import pytest

from instructkit.data import builtin, builtin_words
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
        sum(family.train_records for family in builtin.FAMILIES),
        builtin.TEST_PER_FAMILY * n_families,
        builtin.VAL_PER_FAMILY * n_families,
    )
    trained = Counter(record["family"] for record in train)
    assert trained == {family.name: family.train_records for family in builtin.FAMILIES}
    assert trained["compare"] > trained["count"]  # the slow skills get the training steps
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


def answer_determinant(record: dict) -> str:
    """What fixes the answer, recomputed from the record without the module's code: the
    sorted letters to sort, the letters to reverse, the set of numbers or words, the word
    inflected, the number, the pair."""
    family, item = record["family"], item_text(record)
    if family == "sort_letters":
        return "".join(sorted(item.replace(" ", "")))
    if family == "reverse":
        return item.replace(" ", "")
    if family == "compare":
        return " ".join(sorted(item.split(" or ")))
    if "," in item or family in ("sort", "largest_smallest", "count", "first_last"):
        return ",".join(sorted(part.strip() for part in item.split(",")))
    return item.strip()


# Families whose answer is a one-to-one function of its determinant: a held-out answer is
# then never a training answer of the family either.
ONE_TO_ONE = ("reverse", "sort_letters", "sort", "plural", "past_tense", "next_number")
ONE_TO_ONE += ("number_words",)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_held_out_by_what_determines_the_answer(seed):
    train, test, val = builtin_splits(seed)
    trained = {(r["family"], answer_determinant(r)) for r in train}
    trained_answers = {(r["family"], r["output"]) for r in train}
    for record in test + val:
        assert (record["family"], answer_determinant(record)) not in trained, record
        if record["family"] in ONE_TO_ONE:
            assert (record["family"], record["output"]) not in trained_answers, record
    # the module's own key agrees: anagrams of a training word are held out as one
    train_keys = {(r["family"], builtin.answer_key(r)) for r in train}
    assert not train_keys & {(r["family"], builtin.answer_key(r)) for r in test + val}
    anagram = {"family": "sort_letters", "instruction": "Sort these letters: g o l d", "input": ""}
    assert builtin.answer_key(anagram) == builtin.answer_key({**anagram, "input": "g l o d"})


def test_test_and_val_share_no_item(splits):
    _, test, val = splits
    assert not {underlying_item(r) for r in test} & {underlying_item(r) for r in val}
    for split in (test, val):
        by_family = Counter((r["family"], underlying_item(r)) for r in split)
        assert max(by_family.values()) == 1


def test_test_splits_are_balanced_over_the_classes_a_shortcut_misses(splits):
    _, test, val = splits
    for split, per_family in ((test, builtin.TEST_PER_FAMILY), (val, builtin.VAL_PER_FAMILY)):

        def classes(family, classify, split=split, per_family=per_family):
            """How many classes the family's records fall in; their sizes differ by at most 1."""
            counts = Counter(classify(r) for r in split if r["family"] == family)
            assert sum(counts.values()) == per_family
            assert max(counts.values()) - min(counts.values()) <= 1, (family, counts)
            return len(counts)

        assert classes("plural", lambda r: builtin_words.plural_class(item_text(r))) == 4
        assert classes("past_tense", lambda r: builtin_words.past_class(item_text(r))) == 5
        assert classes("next_number", lambda r: item_text(r).endswith("9")) == 2  # carry or not
        assert classes("count", lambda r: r["output"]) == 4
        assert classes("first_last", lambda r: "first" in phrase(r)) == 2
        assert (
            classes(
                "largest_smallest", lambda r: any(w in phrase(r) for w in ("larg", "big", "high"))
            )
            == 2
        )
        assert classes("compare", lambda r: item_text(r).startswith(r["output"])) == 2
        assert classes("compare", first_difference) == 3
        assert classes("sort", lambda r: item_text(r).count(",")) == 4
        assert classes("reverse", lambda r: len(item_text(r).split())) == 3


def first_difference(record: dict) -> int:
    a, b = item_text(record).split(" or ")
    return next(i for i in range(3) if a[i] != b[i])


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
    if family == "compare":
        return str(max(numbers))
    if family == "plural":
        return expected_plural(item)
    if family == "past_tense":
        return expected_past(item)
    return None  # number_words


def expected_plural(noun: str) -> str:
    for ending, plural in (("man", "men"), ("fe", "ves"), ("ff", "ffs"), ("f", "ves")):
        if noun.endswith(ending):
            return noun[: -len(ending)] + plural
    if re.search(r"[^aeiou]y$", noun):
        return noun[:-1] + "ies"
    return noun + ("es" if re.search(r"(s|x|z|ch|sh)$", noun) else "s")


def expected_past(verb: str) -> str:
    for ending, past in (("eep", "ept"), ("ind", "ound"), ("ing", "ang")):
        if verb.endswith(ending):
            return verb[: -len(ending)] + past
    if re.search(r"[^aeiou]y$", verb):
        return verb[:-1] + "ied"
    if verb.endswith("e"):
        return verb + "d"
    if re.fullmatch(r"[^aeiou]*[aeiou][bdgklmnprt]", verb):
        return verb + verb[-1] + "ed"
    return verb + "ed"


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
    assert set(checked) == set(FAMILY_NAMES)


def test_known_word_forms():
    nouns = ("cat", "box", "church", "city", "boy", "wish", "leaf", "knife", "snowman")
    assert [builtin.plural(w) for w in nouns] == [
        "cats",
        "boxes",
        "churches",
        "cities",
        "boys",
        "wishes",
        "leaves",
        "knives",
        "snowmen",
    ]
    verbs = ("walk", "bake", "cry", "play", "fix", "stop", "visit", "sleep", "find", "sing")
    assert [builtin.past_tense(w) for w in verbs] == [
        "walked",
        "baked",
        "cried",
        "played",
        "fixed",
        "stopped",
        "visited",
        "slept",
        "found",
        "sang",
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
    w = builtin_words
    for words in (w.WORDS, w.NOUNS, w.VERBS, w.VES_NOUNS, w.MAN_NOUNS, w.DOUBLING_VERBS):
        assert len(words) == len(set(words))
        assert all(word.isalpha() and word.islower() for word in words)
    # irregular forms that no rule predicts from the letters are not listed
    assert not {"man", "child", "mouse", "sheep", "fish", "roof", "cliff"} & set(w.NOUNS)
    assert not {"go", "run", "eat", "see", "bring", "think"} & set(w.VERBS + w.IRREGULAR_VERBS)
    assert all(3 <= len(word) <= 5 for word in w.WORDS)
    assert {w.plural_class(n) for n in w.VES_NOUNS + w.MAN_NOUNS} == {"irregular"}
    assert {w.past_class(v) for v in w.DOUBLING_VERBS} == {"doubled"}
    assert {w.past_class(v) for v in w.IRREGULAR_VERBS} == {"irregular"}


def test_file_splits_back_by_its_split_field(splits):
    records = builtin_records(0)
    assert records == splits[0] + splits[1] + splits[2]
    assert split_records(records) == splits  # auto: every record names its split


def test_made_up_words_are_no_real_word_and_test_has_real_words_too(splits):
    train, test, _val = splits
    real = builtin_words.real_words()
    for family in ("plural", "past_tense", "reverse"):
        items = {item_text(r).replace(" ", "") for r in train + test if r["family"] == family}
        assert len(items - real) > 500, family
        held_out = [item_text(r).replace(" ", "") for r in test if r["family"] == family]
        assert 10 <= sum(word in real for word in held_out) < len(held_out), family


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
