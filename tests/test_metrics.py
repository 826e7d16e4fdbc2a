"""Exact match, ROUGE-L and per-group metrics against hand-computed values."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from instructkit.evaluate.metrics import (
    compute_metrics,
    exact_match,
    format_metrics,
    lcs_length,
    normalize,
    rouge_l,
)


def test_normalize_lowercases_and_drops_punctuation_and_extra_space():
    assert normalize("  The Car,  is FAST!\n") == "the car is fast"
    assert normalize("“Quoted” — text…") == "quoted text"
    assert normalize("") == ""


def test_exact_match_ignores_case_punctuation_and_whitespace():
    assert exact_match("The car is as fast as lightning.", "the car is as fast as lightning")
    assert not exact_match("The car is as fast as a bullet.", "The car is as fast as lightning.")


def test_lcs_length_known_cases():
    assert lcs_length("abcbdab", "bdcaba") == 4  # the textbook example (CLRS 15.4)
    assert lcs_length([], ["a"]) == 0
    assert lcs_length(["a", "b"], ["a", "b"]) == 2


def test_rouge_l_hand_computed():
    # LCS("the car is as fast as a bullet", "the car is as fast as lightning") = 6 words
    p, r = 6 / 8, 6 / 7
    assert rouge_l(
        "The car is as fast as a bullet.", "The car is as fast as lightning."
    ) == pytest.approx(2 * p * r / (p + r))
    assert rouge_l("same words here", "Same words, here!") == 1.0
    assert rouge_l("nothing shared", "other text") == 0.0
    assert rouge_l("", "") == 1.0
    assert rouge_l("", "text") == 0.0


@given(
    st.lists(st.sampled_from("abcd"), max_size=12), st.lists(st.sampled_from("abcd"), max_size=12)
)
def test_rouge_l_is_symmetric_and_bounded(a, b):
    x, y = " ".join(a), " ".join(b)
    assert rouge_l(x, y) == pytest.approx(rouge_l(y, x))
    assert 0.0 <= rouge_l(x, y) <= 1.0
    assert lcs_length(a, b) <= min(len(a), len(b))


def test_compute_metrics_overall_and_by_family():
    records = [
        {
            "instruction": "i",
            "input": "",
            "output": "Paris.",
            "model_response": "paris",
            "family": "geo",
        },
        {
            "instruction": "i",
            "input": "",
            "output": "a b c d",
            "model_response": "a b x",
            "family": "geo",
        },
        {
            "instruction": "i",
            "input": "",
            "output": "4",
            "model_response": "five",
            "family": "math",
        },
    ]
    result = compute_metrics(records)
    assert result["n"] == 3
    assert result["exact_match"] == pytest.approx(1 / 3)
    partial = 2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4)
    assert result["rouge_l"] == pytest.approx((1 + partial + 0) / 3)
    assert result["groups"]["geo"] == {
        "n": 2,
        "exact_match": 0.5,
        "rouge_l": pytest.approx((1 + partial) / 2),
    }
    assert result["groups"]["math"]["exact_match"] == 0.0
    assert [s["exact_match"] for s in result["per_record"]] == [True, False, False]
    text = format_metrics(result)
    assert "exact match 33.3%" in text and "geo" in text and "math" in text


def test_compute_metrics_without_group_key_and_empty():
    records = [{"instruction": "i", "input": "", "output": "x", "model_response": "x"}]
    assert "groups" not in compute_metrics(records)
    assert compute_metrics([])["n"] == 0
