"""Stage 5 of the pipeline: scores for a responses file, written to `scores.json`.

`evaluate_responses` computes the offline metrics (`metrics`) and, with a `JudgeClient`,
asks an LLM judge for a 0-100 score per record (`judge`). The scores file holds the
summary and one entry per record (the record, its metrics, and the judge's score, raw
reply and error). It is rewritten atomically as judgements arrive, at most every
`flush_interval` seconds and at the end, and it is also the resume state: a record
whose key (a hash of instruction, input, output and response) already has a reply from
the same judge is not asked again; records that failed with an error are. Without a
judge, judge results already in the file are kept for the records that still match.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from instructkit.console import plural
from instructkit.errors import DataError, UserError
from instructkit.evaluate.judge import (
    JudgeClient,
    Judgement,
    JudgeRejected,
    format_summary,
    judge_all,
    judge_prompt,
    summarize_scores,
)
from instructkit.evaluate.metrics import compute_metrics, format_metrics
from instructkit.files import write_json
from instructkit.responses import RESPONSE_KEY, load_responses

__all__ = ["JudgeClient", "compute_metrics", "evaluate_responses", "format_report", "record_key"]


def record_key(record: dict, response_key: str = RESPONSE_KEY) -> str:
    fields = [record["instruction"], record["input"], record["output"], record[response_key]]
    return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode()).hexdigest()[:20]


def default_scores_path(responses_path: str | Path) -> Path:
    """scores.json beside the responses file (runs/NAME/responses.json -> runs/NAME/scores.json)."""
    return Path(responses_path).with_name("scores.json")


def _load_previous(path: Path) -> dict:
    """The previous scores file's judge spec and its entries by record key ({} when there is none)."""
    if not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        entries = {
            entry["key"]: Judgement(
                entry.get("judge_score"), entry.get("judge_reply"), entry.get("judge_error")
            )
            for entry in saved["records"]
        }
        return {"judge": (saved.get("judge") or {}).get("judge"), "entries": entries}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise DataError(
            f"{path} exists but is not a scores file written by instructkit; "
            "choose another --out or remove it"
        ) from None


def evaluate_responses(
    responses_path: str | Path,
    out_path: str | Path | None = None,
    judge: JudgeClient | None = None,
    *,
    concurrency: int = 1,
    response_key: str = RESPONSE_KEY,
    group_key: str | None = "family",
    flush_interval: float = 1.0,
    progress: bool = True,
) -> dict:
    """Metrics (and judge scores) for a responses file; returns the scores document it wrote."""
    records = load_responses(responses_path, response_key)
    out_path = Path(out_path) if out_path else default_scores_path(responses_path)
    if out_path.resolve() == Path(responses_path).resolve():
        raise UserError(
            f"the scores file {out_path} would overwrite the responses; pick another --out"
        )
    metrics = compute_metrics(records, response_key, group_key)
    per_record = metrics.pop("per_record")
    keys = [record_key(record, response_key) for record in records]

    previous = _load_previous(out_path)
    judge_spec = judge.spec if judge else previous.get("judge")
    entries: dict[int, Judgement] = {}
    if judge_spec and previous.get("judge") == judge_spec:
        for i, key in enumerate(keys):
            old = previous["entries"].get(key)
            if old is not None and (old.finished or judge is None):
                entries[i] = old

    def document() -> dict:
        judged = [entries.get(i) for i in range(len(records))]
        rows = []
        for i, record in enumerate(records):
            row = {**record, **per_record[i], "key": keys[i]}
            if judge_spec:
                j = judged[i]
                row |= {
                    "judge_score": j and j.score,
                    "judge_reply": j and j.reply,
                    "judge_error": j and j.error,
                }
            rows.append(row)
        doc = {"responses": str(responses_path), "metrics": metrics, "judge": None, "records": rows}
        if judge_spec:
            summary = summarize_scores(j.score if j else None for j in judged)
            summary["n_errors"] = sum(1 for j in judged if j is not None and j.error)
            summary["n_refused"] = sum(1 for j in judged if j is not None and j.refused)
            summary["n_unparsed"] = sum(
                1 for j in judged if j is not None and j.finished and j.score is None
            )
            summary["n_pending"] = sum(1 for j in judged if j is None)
            doc["judge"] = {"judge": judge_spec, "url": judge.url if judge else None, **summary}
            if "groups" in metrics:
                groups: dict[str, list] = {}
                for record, j in zip(records, judged, strict=True):
                    groups.setdefault(str(record.get(group_key, "(none)")), []).append(
                        j.score if j else None
                    )
                doc["judge"]["groups"] = {
                    name: {k: v for k, v in summarize_scores(scores).items() if k != "histogram"}
                    for name, scores in sorted(groups.items())
                }
        return doc

    if judge is not None:
        todo = {
            i: judge_prompt(records[i], response_key)
            for i in range(len(records))
            if i not in entries
        }
        if progress and entries:
            print(
                f"resuming: {len(entries)} of {len(records)} records already judged by {judge_spec}"
            )

        def on_result(index: int, judgement: Judgement) -> None:
            entries[index] = judgement

        def on_flush() -> None:
            write_json(out_path, document())

        judge_all(judge, todo, on_result, on_flush, concurrency, flush_interval, progress)
    doc = document()
    write_json(out_path, doc)
    if judge is not None and todo and all(entries[i].refused for i in todo):
        raise JudgeRejected(
            f"the judge at {judge.url} refused all {len(todo)} requests (first: "
            f"{entries[next(iter(todo))].error}); asking again fails the same way: check "
            "--judge's model and what the server accepts"
        )
    return doc


def format_report(doc: dict) -> str:
    """The terminal summary of a scores document."""
    lines = [format_metrics(doc["metrics"])]
    judge = doc.get("judge")
    if judge:
        lines.append(f"judge {judge['judge']}: " + format_summary(judge))
        if judge.get("n_unparsed"):
            lines.append(
                f"  {judge['n_unparsed']} replies held no score from 0 to 100 (kept as judge_reply)"
            )
        if judge.get("n_errors"):
            first = next(r["judge_error"] for r in doc["records"] if r.get("judge_error"))
            failed, refused = judge["n_errors"], judge.get("n_refused", 0)
            advice = "run again to retry them"
            if refused == failed:
                advice = "the judge refused them: asking again fails the same way"
            elif refused:
                advice = f"{refused} of them refused by the judge; run again to retry the others"
            lines.append(f"  {plural(failed, 'request')} failed (first: {first}); {advice}")
        if judge.get("n_pending"):
            lines.append(
                f"  {judge['n_pending']} records not judged yet; pass --judge to judge them"
            )
        for name, group in (judge.get("groups") or {}).items():
            mean = f"{group['mean']:.2f}" if group["mean"] is not None else "-"
            lines.append(f"    {name}: {group['n_scored']} scored of {group['n']}, mean {mean}")
    return "\n".join(lines)
