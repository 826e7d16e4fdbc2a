"""Trivial baselines for the demo's test split: what a model that learned nothing general
would score.

An untrained model scores 0.00 (mostly empty answers), which only shows that training
changed something. The demo's report puts these beside the model instead, per family:
the majority training answer, the input copied, the answer of the nearest training prompt
(recall without a rule), and the family's one-line shortcut rule ("add -s"). A family is
learned when the model beats the best of them.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Sequence

from instructkit.data.builtin import ONES, item_text
from instructkit.evaluate.metrics import exact_match

BASELINES = ("majority", "copy", "nearest", "rule")
HASH_DIMS = 2048  # character-bigram buckets for the nearest-prompt lookup


def _spaced_rule(change: Callable[[str], str]) -> Callable[[str, str], str]:
    """A rule on a spaced-out word ('c a t'), written on the joined letters."""
    return lambda item, question: " ".join(change(item.replace(" ", "")))


def _smallest_first(parts: list[str]) -> list[str]:
    smallest = min(parts)
    rest = list(parts)
    rest.remove(smallest)
    return [smallest, *rest]


def _leading_digit(item: str, question: str) -> str:
    a, b = (part.strip() for part in item.split(" or "))
    return b if b[0] > a[0] else a


def _last_digit_plus_one(item: str, question: str) -> str:
    return item[:-1] + str(int(item[-1]) + 1)


def _digit_words(item: str, question: str) -> str:
    return " ".join(ONES[int(digit)] for digit in item)


# The family's one-line shortcut: what a reader would try before believing in learning.
# Counting has none short of counting (majority answers stand in for it).
RULES: dict[str, tuple[str, Callable[[str, str], str]]] = {
    "reverse": ("swap the first and last letters", _spaced_rule(lambda w: w[-1] + w[1:-1] + w[0])),
    "sort_letters": (
        "the smallest letter moved to the front",
        _spaced_rule(lambda w: "".join(_smallest_first(list(w)))),
    ),
    "sort": (
        "the smallest number moved to the front",
        lambda item, q: ", ".join(_smallest_first([p.strip() for p in item.split(",")])),
    ),
    "largest_smallest": (
        "always the largest",
        lambda item, q: str(max(int(p) for p in item.split(","))),
    ),
    "first_last": ("always the last word", lambda item, q: item.split(",")[-1].strip()),
    "plural": ("add -s", lambda item, q: item + "s"),
    "past_tense": (
        "-d after e, else -ed",
        lambda item, q: item + ("d" if item.endswith("e") else "ed"),
    ),
    "compare": ("the larger first digit, else the first shown", _leading_digit),
    "next_number": ("add one to the last digit", _last_digit_plus_one),
    "number_words": ("each digit in words", _digit_words),
}


def _bigrams(text: str):
    import numpy as np

    vector = np.zeros(HASH_DIMS, dtype=np.float32)
    padded = f"^{text}$"
    for a, b in itertools.pairwise(padded):
        vector[(ord(a) * 131 + ord(b)) % HASH_DIMS] += 1.0
    return vector / max(float(np.linalg.norm(vector)), 1e-9)


def nearest_answers(train: Sequence[dict], test: Sequence[dict]) -> list[str]:
    """Each test record answered with the output of the training record of its family whose
    item is most alike (cosine of character bigrams)."""
    import numpy as np

    answers = [""] * len(test)
    for family in {record["family"] for record in test}:
        pool = [r for r in train if r["family"] == family]
        targets = [i for i, r in enumerate(test) if r["family"] == family]
        if not pool:
            continue
        train_vectors = np.stack([_bigrams(item_text(r).replace(" ", "")) for r in pool])
        test_vectors = np.stack([_bigrams(item_text(test[i]).replace(" ", "")) for i in targets])
        best = (test_vectors @ train_vectors.T).argmax(axis=1)
        for i, j in zip(targets, best, strict=True):
            answers[i] = pool[int(j)]["output"]
    return answers


def baseline_answers(train: Sequence[dict], test: Sequence[dict]) -> dict[str, list[str]]:
    """Per baseline, its answer to each test record (in order)."""
    majority = {
        family: Counter(r["output"] for r in train if r["family"] == family).most_common(1)[0][0]
        for family in {r["family"] for r in train}
    }
    return {
        "majority": [majority.get(r["family"], "") for r in test],
        "copy": [item_text(r) for r in test],
        "nearest": nearest_answers(train, test),
        "rule": [
            RULES[r["family"]][1](item_text(r), r["instruction"]) if r["family"] in RULES else ""
            for r in test
        ],
    }


def baseline_scores(train: Sequence[dict], test: Sequence[dict]) -> dict[str, dict[str, float]]:
    """{family: {baseline: exact match}} on the test records, "overall" for the best baseline
    of each family taken together (the score to beat)."""
    answers = baseline_answers(train, test)
    scores: dict[str, dict[str, float]] = {}
    for family in dict.fromkeys(r["family"] for r in test):
        rows = [i for i, r in enumerate(test) if r["family"] == family]
        scores[family] = {
            name: sum(exact_match(answers[name][i], test[i]["output"]) for i in rows) / len(rows)
            for name in BASELINES
        }
        scores[family]["best"] = max(scores[family][name] for name in BASELINES)
        scores[family]["n"] = len(rows)
    total = sum(s["n"] for s in scores.values())
    scores["overall"] = {"best": sum(s["best"] * s["n"] for s in scores.values()) / max(total, 1)}
    return scores
