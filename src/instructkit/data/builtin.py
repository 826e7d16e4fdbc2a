"""The built-in instruction dataset the offline demo trains on.

No dataset can be downloaded on an offline machine, so the demo needs data that code
can make: small tasks whose answers are exact and checkable (reverse letters, sort
numbers, plural forms, ...), each phrased several ways, about a third of them with the
`input` field, in the Alpaca schema plus a `family` key naming the task. The tasks are
sized for a GPT of a few million parameters that learns them from scratch in minutes:
short items, letters spaced out so each is a token, and some hundreds of distinct items
per task, since a model that small learns the rule only from many distinct examples.

Held-out records test generalisation, not recall, and are held out by what determines
the answer (`answer_key`): the letters of a word to reverse, the sorted letters of a word
to sort (so an anagram of a training word is never a test word), the set of numbers or
words, the word being inflected, the number, the pair compared. Each domain's items are
grouped by that key and the groups split once into train, test and val pools; families
that share a domain share its pools.

The test and val pools are balanced over the classes a shortcut would miss: plural and
past tense over their rule classes (`instructkit.data.builtin_words`), numbers to count
up from with and without a carry, word lists and number sets over their lengths, pairs
over the digit where they first differ; first/last and largest/smallest are asked half
each way. Items mix real words with made-up ones built from English syllables (the
linguists' "wug" test): a few hundred real words are too few to learn "add -s" rather
than recall each word. Every record names its split in a `split` field.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from instructkit.data.builtin_words import (
    DOUBLING_VERBS,
    IRREGULAR_VERBS,
    MAN_NOUNS,
    NOUN_MAKERS,
    NOUNS,
    VERB_MAKERS,
    VERBS,
    VES_NOUNS,
    WORDS,
    letters_word,
    past_class,
    past_tense,
    plural,
    plural_class,
    pseudo_words,
)
from instructkit.errors import UserError
from instructkit.files import write_atomic

# Records per family (training: the default; see `Family.train_records`). Every record
# carries its split, so the proportions are free.
TRAIN_PER_FAMILY, TEST_PER_FAMILY, VAL_PER_FAMILY = 1600, 200, 50
# Made-up words per domain (word) and per rule class (noun, verb); all of a class's
# made-up words where there are fewer (irregular verbs).
PSEUDO_WORDS = 1500
PSEUDO_PER_CLASS = 400
INPUT_FRACTION = 1 / 3

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEENS = ["ten", "eleven", "twelve", "thirteen", "fourteen"]
TEENS += ["fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]

# Instruction phrasings. A record puts its item after "PHRASE: " in the instruction, or
# uses the phrase alone as the instruction and the item as `input`.
PHRASES = {
    "reverse": (
        "Reverse the order of these letters",
        "Write these letters backwards",
        "List these letters in reverse order",
    ),
    "sort_letters": (
        "Put these letters in alphabetical order",
        "Sort these letters from a to z",
        "Arrange these letters alphabetically",
    ),
    "sort": (
        "Sort these numbers from smallest to largest",
        "Put these numbers in ascending order",
        "Arrange these numbers in increasing order",
    ),
    "largest": (
        "Which number is the largest",
        "Give the biggest number in this list",
        "Pick the highest number",
    ),
    "smallest": (
        "Which number is the smallest",
        "Give the lowest number in this list",
        "Pick the smallest number",
    ),
    "count": (
        "How many words are in this list",
        "Count the words in this list",
        "Give the number of words in this list",
    ),
    "first": (
        "What is the first word in this list",
        "Give the first word of this list",
        "Name the word that comes first in this list",
    ),
    "last": (
        "What is the last word in this list",
        "Give the last word of this list",
        "Name the word that comes last in this list",
    ),
    "plural": (
        "Give the plural form of this noun",
        "Write the plural of this word",
        "What is the plural of this noun",
    ),
    "past_tense": (
        "Give the past tense of this verb",
        "Write this verb in the past tense",
        "What is the past tense of this verb",
    ),
    "compare": (
        "Which of these two numbers is larger",
        "Give the bigger of these two numbers",
        "Pick the greater number",
    ),
    "next_number": (
        "What number comes after this one",
        "Add one to this number",
        "Give the next whole number after this one",
    ),
    "number_words": (
        "Write this number in words",
        "Spell out this number",
        "How is this number written in words",
    ),
}


def number_words(n: int) -> str:
    """0-999 in English words, American style: three hundred forty-seven."""
    hundreds, rest = divmod(n, 100)
    if hundreds:
        return f"{ONES[hundreds]} hundred" + (f" {number_words(rest)}" if rest else "")
    if rest < 10:
        return ONES[rest]
    if rest < 20:
        return TEENS[rest - 10]
    tens, ones = divmod(rest, 10)
    return TENS[tens] if ones == 0 else f"{TENS[tens]}-{ONES[ones]}"


# Domains: each makes its items (keys) with the class each belongs to, and groups them by
# what determines their answers; the groups are split into train, test and val pools.


@dataclass(frozen=True)
class Domain:
    """Items of one kind: `make` gives {key: class}; `unit` names a key's hold-out group."""

    make: Callable[[random.Random], dict[str, str]]
    unit: Callable[[str], str] = lambda key: key


def _words(rng: random.Random) -> dict[str, str]:
    made_up = pseudo_words(rng, PSEUDO_WORDS, letters_word, lambda w: 3 <= len(w) <= 5)
    return {word: str(len(word)) for word in WORDS + made_up}


def _classed(
    real: list[str], makers: dict, classify: Callable[[str], str], max_len: int
) -> Callable[[random.Random], dict[str, str]]:
    def make(rng: random.Random) -> dict[str, str]:
        keys = {word: classify(word) for word in real}
        for kind, maker in makers.items():
            for word in pseudo_words(
                rng,
                PSEUDO_PER_CLASS,
                maker,
                lambda w, kind=kind: classify(w) == kind and 3 <= len(w) <= max_len,
            ):
                keys[word] = kind
        return keys

    return make


def _digit_sets(rng: random.Random) -> dict[str, str]:
    """Every set of 3-6 distinct digits (792 of them), each digit one token to compare."""
    sets = (c for n in (3, 4, 5, 6) for c in itertools.combinations(range(10), n))
    return {",".join(map(str, c)): str(len(c)) for c in sets}


def _word_lists(rng: random.Random) -> dict[str, str]:
    keys: dict[str, str] = {}
    while len(keys) < 6000:
        words = sorted(rng.sample(WORDS, rng.randint(2, 5)))
        keys[",".join(words)] = str(len(words))
    return keys


def _pairs(rng: random.Random) -> dict[str, str]:
    """Pairs of 3-digit numbers, classed by the digit where they first differ."""
    keys: dict[str, str] = {}
    for position in range(3):
        made = 0
        while made < 3000:
            a = rng.randint(100, 999)
            digits = list(str(a))
            digits[position] = rng.choice([d for d in "0123456789" if d != digits[position]])
            digits[position + 1 :] = [rng.choice("0123456789") for _ in digits[position + 1 :]]
            b = int("".join(digits))
            key = ",".join(map(str, sorted((a, b))))
            if b >= 100 and key not in keys:
                keys[key] = str(position)
                made += 1
    return keys


DOMAINS: dict[str, Domain] = {
    "word": Domain(_words, unit=lambda key: "".join(sorted(key))),  # anagrams together
    "numbers": Domain(_digit_sets),
    "word_list": Domain(_word_lists),
    "noun": Domain(_classed(NOUNS + VES_NOUNS + MAN_NOUNS, NOUN_MAKERS, plural_class, 9)),
    "verb": Domain(_classed(VERBS + DOUBLING_VERBS + IRREGULAR_VERBS, VERB_MAKERS, past_class, 7)),
    "number": Domain(lambda rng: {str(n): "" for n in range(1000)}),
    "count_to": Domain(lambda rng: {str(n): str(n % 10 == 9) for n in range(10000)}),
    "pair": Domain(_pairs),
}

# Domains whose keys are the same kind of thing: plain words, whole numbers.
SHARED_KEYS = (("word", "noun", "verb"), ("number", "count_to"))


# Families render a key as (phrase, item text, answer); `variant` picks which way a
# two-way question is asked, the rng the phrasing and the order in which a set is shown.


def _spaced(word: str) -> str:
    return " ".join(word)


def _shown(key: str, rng: random.Random) -> list[str]:
    items = key.split(",")
    rng.shuffle(items)
    return items


def _reverse(key: str, rng: random.Random, variant: str) -> tuple[str, str, str]:
    return rng.choice(PHRASES["reverse"]), _spaced(key), _spaced(key[::-1])


def _sort_letters(key: str, rng: random.Random, variant: str) -> tuple[str, str, str]:
    return rng.choice(PHRASES["sort_letters"]), _spaced(key), _spaced("".join(sorted(key)))


def _sort(key: str, rng: random.Random, variant: str) -> tuple[str, str, str]:
    return rng.choice(PHRASES["sort"]), ", ".join(_shown(key, rng)), key.replace(",", ", ")


def _extreme(key: str, rng: random.Random, variant: str) -> tuple[str, str, str]:
    numbers = [int(n) for n in key.split(",")]
    answer = max(numbers) if variant == "largest" else min(numbers)
    return rng.choice(PHRASES[variant]), ", ".join(_shown(key, rng)), str(answer)


def _count(key: str, rng: random.Random, variant: str) -> tuple[str, str, str]:
    words = _shown(key, rng)
    return rng.choice(PHRASES["count"]), ", ".join(words), str(len(words))


def _pick(key: str, rng: random.Random, variant: str) -> tuple[str, str, str]:
    words = _shown(key, rng)
    return rng.choice(PHRASES[variant]), ", ".join(words), words[0 if variant == "first" else -1]


def _plural(key: str, rng: random.Random, variant: str) -> tuple[str, str, str]:
    return rng.choice(PHRASES["plural"]), key, plural(key)


def _past_tense(key: str, rng: random.Random, variant: str) -> tuple[str, str, str]:
    return rng.choice(PHRASES["past_tense"]), key, past_tense(key)


def _compare(key: str, rng: random.Random, variant: str) -> tuple[str, str, str]:
    small, large = key.split(",")
    shown = (large, small) if variant == "larger first" else (small, large)
    return rng.choice(PHRASES["compare"]), " or ".join(shown), large


def _next_number(key: str, rng: random.Random, variant: str) -> tuple[str, str, str]:
    return rng.choice(PHRASES["next_number"]), key, str(int(key) + 1)


def _number_words(key: str, rng: random.Random, variant: str) -> tuple[str, str, str]:
    return rng.choice(PHRASES["number_words"]), key, number_words(int(key))


@dataclass(frozen=True)
class Family:
    """A task: the domain its items come from and how it renders one."""

    name: str
    domain: str
    render: Callable[[str, random.Random, str], tuple[str, str, str]]
    variants: tuple[str, ...] = ("",)
    """The ways a question is asked; held-out records take them in turn."""
    train_records: int = TRAIN_PER_FAMILY
    """Training records. The demo's training steps are few, so they go where the model
    learns slowest: compare (decide which number once, then copy it, where the model
    otherwise learns a digit-by-digit max) and first_last (point at a list end and copy a
    word of several tokens) get more; count, number_words and largest_smallest, learned
    within a few hundred steps, fewer (validation runs in BENCHMARKS.md)."""


FAMILIES: tuple[Family, ...] = (
    Family("reverse", "word", _reverse),
    Family("sort_letters", "word", _sort_letters),
    Family("sort", "numbers", _sort),
    Family("largest_smallest", "numbers", _extreme, ("largest", "smallest"), train_records=1400),
    Family("count", "word_list", _count, train_records=800),
    Family("first_last", "word_list", _pick, ("first", "last"), train_records=3200),
    Family("plural", "noun", _plural),
    Family("past_tense", "verb", _past_tense),
    Family("compare", "pair", _compare, ("larger first", "larger last"), train_records=4800),
    Family("next_number", "count_to", _next_number),
    Family("number_words", "number", _number_words, train_records=1000),
)
FAMILY_NAMES = tuple(family.name for family in FAMILIES)
_FAMILY = {family.name: family for family in FAMILIES}


def item_text(record: dict) -> str:
    """The item a record asks about, as shown: its input, or what follows the phrase."""
    return record["input"] or record["instruction"].rsplit(": ", 1)[1]


def canonical_item(family: str, item: str) -> str:
    """The domain key of an item as shown in a record, e.g. 'c a t' -> 'word:cat'."""
    domain = _FAMILY[family].domain
    if domain == "word":
        key = item.replace(" ", "").lower()
    elif domain in ("numbers", "word_list"):
        key = ",".join(sorted(part.strip() for part in item.split(",")))
    elif domain == "pair":
        key = ",".join(sorted((part.strip() for part in item.split(" or ")), key=int))
    else:
        key = item.strip()
    return f"{domain}:{key}"


def underlying_item(record: dict) -> str:
    """The domain key of a built-in record's item, to check splits share no item."""
    return canonical_item(record["family"], item_text(record))


def answer_key(record: dict) -> str:
    """What determines a record's answer, from the record alone: the word's sorted letters
    for sort_letters (anagrams have one answer), else the item itself (its letters, its set
    of numbers or words, the word inflected, the number, the pair). Held-out records never
    share it with a training record of their family."""
    item = underlying_item(record)
    if record["family"] == "sort_letters":
        return "letters:" + "".join(sorted(item.split(":", 1)[1]))
    return item


def _stratified(units: dict[str, list[str]], classes: dict[str, str], n: int) -> list[str]:
    """n units taken in turn from each class (classes in sorted order), removed from `units`."""
    by_class: dict[str, list[str]] = {}
    for unit, keys in units.items():
        by_class.setdefault(classes[keys[0]], []).append(unit)
    queues = [by_class[kind] for kind in sorted(by_class)]
    order = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]
    taken = order[:n]
    for unit in taken:
        del units[unit]
    return taken


def _split_domain(name: str, seed: int) -> tuple[dict[str, str], list[str], list[str]]:
    """A domain's ({train key: class}, test keys, val keys): whole units, balanced by class."""
    domain = DOMAINS[name]
    rng = random.Random(f"{seed}:domain:{name}")
    classes = domain.make(rng)
    keys = list(classes)
    rng.shuffle(keys)
    units: dict[str, list[str]] = {}
    for key in keys:
        units.setdefault(domain.unit(key), []).append(key)
    groups = {unit: list(members) for unit, members in units.items()}
    test = [groups[unit][0] for unit in _stratified(units, classes, TEST_PER_FAMILY)]
    val = [groups[unit][0] for unit in _stratified(units, classes, VAL_PER_FAMILY)]
    train = {key: classes[key] for members in units.values() for key in members}
    return train, test, val


def _train_keys(pool: dict[str, str], rng: random.Random, count: int) -> list[str]:
    """`count` keys taken in turn from each class, so every class trains as often; distinct
    while a class lasts, then its keys again."""
    by_class: dict[str, list[str]] = {}
    for key in rng.sample(list(pool), len(pool)):
        by_class.setdefault(pool[key], []).append(key)
    cycles = [itertools.cycle(by_class[kind]) for kind in sorted(by_class)]
    return [next(cycles[i % len(cycles)]) for i in range(count)]


def _record(family: Family, key: str, rng: random.Random, split: str, variant: str) -> dict:
    phrase, item, output = family.render(key, rng, variant)
    if rng.random() < INPUT_FRACTION:
        instruction, input_text = (
            phrase + ("?" if phrase.startswith(("What", "Which", "How")) else "."),
            item,
        )
    else:
        instruction, input_text = f"{phrase}: {item}", ""
    return {
        "instruction": instruction,
        "input": input_text,
        "output": output,
        "family": family.name,
        "split": split,
    }


def builtin_splits(seed: int = 0) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, test, val) records, the same for the same seed; what determines a test or val
    answer never trains in its family."""
    pools = {name: _split_domain(name, seed) for name in DOMAINS}
    # A word held out as a noun or verb does not train as letters to reverse, and so on.
    for group in SHARED_KEYS:
        held_out = {key for name in group for key in pools[name][1] + pools[name][2]}
        for name in group:
            train_pool, test_pool, val_pool = pools[name]
            kept = {key: kind for key, kind in train_pool.items() if key not in held_out}
            pools[name] = kept, test_pool, val_pool
    train, test, val = [], [], []
    for family in FAMILIES:
        rng = random.Random(f"{seed}:family:{family.name}")
        train_pool, test_pool, val_pool = pools[family.domain]
        for key in _train_keys(train_pool, rng, family.train_records):
            train.append(_record(family, key, rng, "train", rng.choice(family.variants)))
        for name, records, pool in (("test", test, test_pool), ("val", val, val_pool)):
            for i, key in enumerate(rng.sample(pool, len(pool))):
                variant = family.variants[i % len(family.variants)]
                records.append(_record(family, key, rng, name, variant))
    order = random.Random(f"{seed}:order")
    for split in (train, test, val):
        order.shuffle(split)
    return train, test, val


def builtin_records(seed: int = 0) -> list[dict]:
    """All records as written to a file: train, then test, then val, each naming its split."""
    train, test, val = builtin_splits(seed)
    return train + test + val


def write_builtin(path: Path, seed: int = 0) -> int:
    """Write the records as a JSON list, atomically; returns how many were written."""
    path = Path(path)
    records = builtin_records(seed)
    try:
        write_atomic(path, json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    except OSError as error:
        raise UserError(
            f"cannot write the built-in dataset to {path}: {error.strerror or error}"
        ) from None
    return len(records)
