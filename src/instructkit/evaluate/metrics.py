"""Offline metrics for model responses: exact match and ROUGE-L, overall and per group.

Both compare a model response with the record's reference `output` after the same
normalisation (lowercase, punctuation removed, whitespace collapsed), so "The car is
fast." and "the car is fast" match. ROUGE-L is the F1 of the longest common
subsequence of words (Lin, 2004), written here so no extra dependency is needed.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str) -> str:
    """Lowercase, drop punctuation (ASCII and Unicode) and collapse whitespace."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    text = _PUNCTUATION.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> bool:
    return normalize(prediction) == normalize(reference)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, in O(len(a) * len(b)) time and O(len(b)) memory."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for token_a in a:
        current = [0] * (len(b) + 1)
        for j, token_b in enumerate(b, start=1):
            if token_a == token_b:
                current[j] = previous[j - 1] + 1
            else:
                current[j] = max(previous[j], current[j - 1])
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over normalised words; two empty texts score 1, one empty text scores 0."""
    pred_tokens = normalize(prediction).split()
    ref_tokens = normalize(reference).split()
    if not pred_tokens and not ref_tokens:
        return 1.0
    lcs = lcs_length(pred_tokens, ref_tokens)
    if lcs == 0:
        return 0.0
    precision = lcs / len(pred_tokens)
    recall = lcs / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def score_record(record: dict, response_key: str = "model_response") -> dict[str, float | bool]:
    """The metrics of one record: its response against its reference output."""
    prediction = record[response_key]
    reference = record["output"]
    return {
        "exact_match": exact_match(prediction, reference),
        "rouge_l": rouge_l(prediction, reference),
    }


def summarize(per_record: list[dict[str, float | bool]]) -> dict[str, float | int]:
    """Mean exact match and ROUGE-L over records (0 records give 0, not an error)."""
    n = len(per_record)
    if n == 0:
        return {"n": 0, "exact_match": 0.0, "rouge_l": 0.0}
    return {
        "n": n,
        "exact_match": sum(bool(s["exact_match"]) for s in per_record) / n,
        "rouge_l": sum(float(s["rouge_l"]) for s in per_record) / n,
    }


def compute_metrics(
    records: list[dict], response_key: str = "model_response", group_key: str | None = "family"
) -> dict:
    """Overall metrics, per-record scores, and per-group metrics when records carry `group_key`.

    Records without the group key are grouped under "(none)" so the groups add up to the total.
    """
    per_record = [score_record(record, response_key) for record in records]
    result: dict = {**summarize(per_record), "per_record": per_record}
    if group_key and any(group_key in record for record in records):
        groups: dict[str, list[dict]] = {}
        for record, scores in zip(records, per_record, strict=True):
            groups.setdefault(str(record.get(group_key, "(none)")), []).append(scores)
        result["group_key"] = group_key
        result["groups"] = {name: summarize(scores) for name, scores in sorted(groups.items())}
    return result


def format_metrics(metrics: dict) -> str:
    """A few lines for the terminal: the overall numbers, then one line per group."""
    lines = [
        (
            f"metrics over {metrics['n']} responses: exact match {metrics['exact_match']:.1%}, "
            f"ROUGE-L F1 {metrics['rouge_l']:.3f}"
        )
    ]
    groups = metrics.get("groups") or {}
    if groups:
        width = max(len(name) for name in groups)
        lines.append(f"  by {metrics['group_key']}:")
        for name, group in groups.items():
            lines.append(
                f"    {name:<{width}}  n={group['n']:<4} exact match {group['exact_match']:6.1%}  "
                f"ROUGE-L {group['rouge_l']:.3f}"
            )
    return "\n".join(lines)
