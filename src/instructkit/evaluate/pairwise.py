"""Pairwise judging: is model A's response better than model B's, record by record?

This is how a user sees whether preference tuning helped: `instructkit evaluate
--responses A.json --against B.json --judge ollama:MODEL`. Records are matched by
instruction and input. Each pair is asked twice, with A shown first and then second, since
LLM judges favour a position; per order A earns 1 (preferred), 0.5 (tie) or 0, and the two
orders together decide: more than 1 is a win, exactly 1 a tie, less a loss. So a judge that
always picks the first response scores every pair a tie. The win rate counts a tie as half
a win, with a 95% Wilson score interval.

The output file is also the resume state, as for the pointwise judge: a verdict whose key
(a hash of the prompt pair and the order) already has a reply from the same judge is not
asked again; failed requests are.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

from instructkit.errors import DataError, UserError
from instructkit.evaluate.judge import JudgeClient, Judgement, judge_all
from instructkit.files import write_json
from instructkit.responses import RESPONSE_KEY, load_responses

ORDERS = ("ab", "ba")  # A shown as response 1, then as response 2
_VERDICT = re.compile(r"\b(1|2|tie)\b", re.IGNORECASE)
Z_95 = 1.959963984540054


def pairwise_prompt(record: dict, first: str, second: str) -> str:
    """The question for one order of one pair, in the book's judge style."""
    from instructkit.data import format_input

    return (
        f"Given the input `{format_input(record)}` "
        f"and correct output `{record['output']}`, "
        f"which response is better?\n"
        f"Response 1: `{first}`\n"
        f"Response 2: `{second}`\n"
        f"Respond with 1, 2 or tie only."
    )


def parse_verdict(reply: str) -> str | None:
    """'1', '2' or 'tie' from the judge's reply; None when it holds none of them."""
    found = _VERDICT.search(reply)
    return found.group(1).lower() if found else None


def points_for_a(order: str, verdict: str) -> float:
    """A's points from one order's verdict: 1 preferred, 0.5 tie, 0 not."""
    if verdict == "tie":
        return 0.5
    a_position = "1" if order == "ab" else "2"
    return 1.0 if verdict == a_position else 0.0


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion (ties counted as half a success)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _pair_key(record: dict) -> tuple[str, str]:
    return (record["instruction"], record["input"])


def match_records(a: list[dict], b: list[dict], a_path, b_path) -> list[tuple[dict, dict]]:
    """A's records with B's of the same instruction and input (both files must hold the same)."""
    by_key = {_pair_key(record): record for record in b}
    missing = [i for i, record in enumerate(a) if _pair_key(record) not in by_key]
    if missing or len(a) != len(b):
        raise DataError(
            f"{a_path} and {b_path} must answer the same records (matched by instruction and "
            f"input): {len(a)} and {len(b)} records, {len(missing)} of {a_path} not in {b_path}"
            + (f" (first: record index {missing[0]})" if missing else "")
        )
    return [(record, by_key[_pair_key(record)]) for record in a]


def verdict_key(record: dict, a_response: str, b_response: str, order: str) -> str:
    fields = [record["instruction"], record["input"], a_response, b_response, order]
    return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode()).hexdigest()[:20]


def compare_responses(
    responses_path: str | Path,
    against_path: str | Path,
    judge: JudgeClient,
    out_path: str | Path | None = None,
    *,
    concurrency: int = 1,
    response_key: str = RESPONSE_KEY,
    flush_interval: float = 1.0,
    progress: bool = True,
) -> dict:
    """Judge A (`responses_path`) against B (`against_path`); returns the document it wrote."""
    a_records = load_responses(responses_path, response_key)
    b_records = load_responses(against_path, response_key)
    pairs = match_records(a_records, b_records, responses_path, against_path)
    out_path = Path(out_path) if out_path else Path(responses_path).with_name("pairwise.json")
    if out_path.resolve() in (Path(responses_path).resolve(), Path(against_path).resolve()):
        raise UserError(
            f"the output {out_path} would overwrite a responses file; pick another --out"
        )
    tasks = [(i, order) for i in range(len(pairs)) for order in ORDERS]
    keys = [
        verdict_key(pairs[i][0], pairs[i][0][response_key], pairs[i][1][response_key], order)
        for i, order in tasks
    ]
    replies: dict[int, Judgement] = {}
    previous = _load_previous(out_path)
    if previous.get("judge") == judge.spec:
        for t, key in enumerate(keys):
            old = previous["replies"].get(key)
            if old is not None and old.finished:
                replies[t] = old

    def document() -> dict:
        return _document(
            responses_path, against_path, judge, pairs, tasks, keys, replies, response_key
        )

    prompts = {}
    for t, (i, order) in enumerate(tasks):
        if t not in replies:
            a, b = pairs[i][0][response_key], pairs[i][1][response_key]
            first, second = (a, b) if order == "ab" else (b, a)
            prompts[t] = pairwise_prompt(pairs[i][0], first, second)
    if progress and replies:
        print(f"resuming: {len(replies)} of {len(tasks)} verdicts already given by {judge.spec}")

    def on_result(index: int, judgement: Judgement) -> None:
        replies[index] = judgement

    judge_all(
        judge, prompts, on_result, lambda: write_json(out_path, document()),
        concurrency, flush_interval, progress,
    )  # fmt: skip
    doc = document()
    write_json(out_path, doc)
    return doc


def _document(responses_path, against_path, judge, pairs, tasks, keys, replies, response_key):
    rows = [
        {
            "instruction": a["instruction"], "input": a["input"], "output": a["output"],
            "response": a[response_key], "against": b[response_key], "verdicts": {}, "outcome": None,
        }
        for a, b in pairs
    ]  # fmt: skip
    for t, (i, order) in enumerate(tasks):
        judgement = replies.get(t)
        rows[i]["verdicts"][order] = {
            "key": keys[t],
            "verdict": parse_verdict(judgement.reply) if judgement and judgement.reply else None,
            "reply": judgement and judgement.reply,
            "error": judgement and judgement.error,
        }
    counts = {"win": 0, "tie": 0, "loss": 0}
    for row in rows:
        verdicts = [row["verdicts"][order]["verdict"] for order in ORDERS]
        if all(verdicts):
            points = sum(points_for_a(order, v) for order, v in zip(ORDERS, verdicts))
            row["outcome"] = "win" if points > 1 else "tie" if points == 1 else "loss"
            counts[row["outcome"]] += 1
    decided = sum(counts.values())
    wins = counts["win"] + counts["tie"] / 2
    all_verdicts = [v for row in rows for v in row["verdicts"].values()]
    summary = {
        "judge": judge.spec,
        "url": judge.url,
        "n": len(rows),
        "n_decided": decided,
        **counts,
        "win_rate": wins / decided if decided else None,
        "win_rate_ci95": list(wilson_interval(wins, decided)) if decided else None,
        "n_errors": sum(1 for v in all_verdicts if v["error"]),
        "n_unparsed": sum(1 for v in all_verdicts if v["reply"] is not None and not v["verdict"]),
        "n_pending": sum(1 for v in all_verdicts if v["reply"] is None and not v["error"]),
    }
    return {
        "responses": str(responses_path),
        "against": str(against_path),
        "pairwise": summary,
        "records": rows,
    }


def _load_previous(path: Path) -> dict:
    """The previous file's judge and its finished replies by verdict key ({} when none)."""
    if not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        found = {}
        for row in saved["records"]:
            for verdict in row["verdicts"].values():
                found[verdict["key"]] = Judgement(None, verdict["reply"], verdict["error"])
        return {"judge": saved["pairwise"]["judge"], "replies": found}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise DataError(
            f"{path} exists but is not a pairwise file written by instructkit; "
            "choose another --out or remove it"
        ) from None


def format_pairwise(doc: dict) -> str:
    """The terminal summary."""
    s = doc["pairwise"]
    lines = [
        f"judge {s['judge']}: {s['n_decided']} of {s['n']} pairs decided, each asked in both orders",
        f"  {doc['responses']} vs {doc['against']}: {s['win']} wins, {s['tie']} ties, {s['loss']} losses",
    ]
    if s["win_rate"] is not None:
        low, high = s["win_rate_ci95"]
        lines.append(
            f"  win rate {s['win_rate']:.3f} (ties count half), 95% CI [{low:.3f}, {high:.3f}]"
        )
    if s["n_unparsed"]:
        lines.append(f"  {s['n_unparsed']} replies held no 1, 2 or tie (kept as reply)")
    if s["n_errors"]:
        lines.append(f"  {s['n_errors']} requests failed; run again to retry them")
    return "\n".join(lines)
