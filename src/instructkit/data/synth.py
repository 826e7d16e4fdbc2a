"""Instruction records and preference pairs written by an LLM, as in the book's bonus notebooks.

`generate_records` follows the book's Llama 3 + Ollama recipe (Magpie, arXiv 2406.08464):
send an aligned chat model only the start of a user turn of its own chat template as an
assistant message; the model continues by writing a user's request, whose first line is
the new instruction; then ask the model that instruction for its answer. Instructions
that duplicate (or nearly duplicate) an existing or earlier record are dropped before
their answer is asked for. `make_preferences` follows the book's DPO data recipe: the
LLM rewrites each record's output to be more polite (chosen) and less polite (rejected).

Both talk to the model through the judge's HTTP client (`JudgeClient`: Ollama and
OpenAI-compatible APIs, retries, timeouts) and run requests `concurrency` at a time with
the judge's `run_concurrently`. Progress goes to `OUT.partial` (atomically, at most every
`flush_interval` seconds and at the end), so a killed run resumes where it stopped: a
record saved there is never made again or lost. The result is written to OUT at the end
and the progress file removed.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from instructkit.data.dedup import DuplicateIndex
from instructkit.data.prompts import format_input
from instructkit.data.writing import save_records
from instructkit.errors import UserError
from instructkit.evaluate.judge import JudgeClient, JudgeRequestError, run_concurrently
from instructkit.files import write_json

# The start of a user turn in each chat template: the model writes what follows.
USER_PREFIXES = {
    "llama3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>",
    "chatml": "<|im_start|>user\n",
    "phi3": "<|user|>\n",
    "gemma": "<start_of_turn>user\n",
}
TEMPLATE_HINTS = (("qwen", "chatml"), ("phi", "phi3"), ("gemma", "gemma"))
# Sampling for instructions: varied (temperature 1, as Magpie) but reproducible per attempt.
INSTRUCTION_SAMPLING = {"temperature": 1.0, "top_p": 1.0}
GENERATED_FIELDS = ("instruction", "input")
_SPECIAL_TOKEN = re.compile(r"<\|[^|>\s]{1,40}\|>|<(?:start|end)_of_turn>")


def user_prefix(model: str, template: str = "auto") -> str:
    """The user-turn prefix of `template`, or of the template `model`'s name suggests."""
    if template == "auto":
        name = model.lower()
        template = next((t for hint, t in TEMPLATE_HINTS if hint in name), "llama3")
    try:
        return USER_PREFIXES[template]
    except KeyError:
        raise UserError(
            f"--template {template!r} is unknown; use auto or one of {', '.join(USER_PREFIXES)}"
        ) from None


def extract_instruction(text: str) -> str:
    """The book's extraction: the first non-empty line, without leftover template tokens."""
    for line in _SPECIAL_TOKEN.sub("\n", text).splitlines():
        line = line.strip()
        if line and line.lower() not in ("user", "assistant"):
            return line
    return ""


def _outside_input(out: Path, inputs: Sequence[Path | None]) -> None:
    for path in inputs:
        if path is not None and Path(path).resolve() == out.resolve():
            raise UserError(f"--out {out} is the input file {path}; choose another --out")


def _load_state(partial: Path, out: Path, settings: dict) -> dict | None:
    """The saved progress of an earlier run with the same settings (None: start afresh)."""
    if not partial.exists():
        if out.exists():
            raise UserError(f"{out} exists; choose another --out or delete it")
        return None
    try:
        state = json.loads(partial.read_text(encoding="utf-8"))
        saved = state["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(
            f"{partial} is not a progress file written by instructkit; delete it to start afresh"
        ) from None
    if saved != settings:
        changed = ", ".join(f"{k} {saved.get(k)!r} -> {v!r}" for k, v in settings.items()
                            if saved.get(k) != v)  # fmt: skip
        raise UserError(
            f"{partial} holds progress made with other settings ({changed}); run with the "
            "same settings to resume it, or delete it to start afresh"
        )
    return state


@dataclass
class GenerationResult:
    """The records made so far, and what became of this run's other attempts."""

    records: list[dict]
    resumed: int = 0  # records an earlier run had made
    attempts: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # "duplicate", "empty", "failed"
    errors: list[str] = field(default_factory=list)


def generate_records(
    client: JudgeClient,
    n: int,
    out: str | Path,
    *,
    existing: Sequence[dict] = (),
    seed_data: str | Path | None = None,
    template: str = "auto",
    seed: int = 0,
    threshold: float = 0.9,
    concurrency: int = 1,
    max_attempts: int | None = None,
    flush_interval: float = 1.0,
    progress: bool = True,
) -> GenerationResult:
    """`n` new records (instruction, input "", output) in `out`; see the module docstring.

    `existing` records (the seed data) are never duplicated. `max_attempts` (default
    4n + 20) bounds the instruction requests of this run, for a model that keeps
    repeating itself; the result then holds fewer than n records and `out` is not written.
    """
    from tqdm import tqdm

    out = Path(out)
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    _outside_input(out, [Path(seed_data) if seed_data else None])
    prefix = user_prefix(client.model, template)
    settings = {"with": client.spec, "prefix": prefix, "seed": seed, "threshold": threshold}
    partial = Path(f"{out}.partial")
    state = _load_state(partial, out, settings) or {"next_attempt": 0, "records": []}
    result = GenerationResult(records=list(state["records"]), resumed=len(state["records"]))
    index = DuplicateIndex(GENERATED_FIELDS, threshold)
    for position, item in enumerate(index.prepare([*existing, *result.records])):
        index.add(position, item)
    lock = threading.Lock()
    budget = max_attempts if max_attempts is not None else 4 * n + 20
    if progress and result.records:
        print(f"resuming: {len(result.records)} of {n} records already generated")

    def attempt(number: int) -> tuple[str, object]:
        """One new record from attempt `number`, or why there is none."""
        options = {**INSTRUCTION_SAMPLING, "seed": seed + number}
        try:
            instruction = extract_instruction(client.ask(prefix, role="assistant", options=options))
        except JudgeRequestError as error:
            return "failed", str(error)
        if not instruction:
            return "empty", None
        record = {"instruction": instruction, "input": ""}
        with lock:  # reserve the instruction, so parallel attempts cannot both take it
            prepared = index.prepare([record])[0]
            if index.find(prepared) is not None:
                return "duplicate", None
            index.add(("pending", number), prepared)
        try:
            answer = client.ask(instruction).strip()
        except JudgeRequestError as error:
            answer, failure = "", str(error)
        else:
            failure = None
        if not answer:
            with lock:
                index.remove(("pending", number))
            return ("failed", failure) if failure else ("empty", None)
        return "new", {**record, "output": answer}

    def on_result(number: int, outcome: tuple[str, object]) -> None:
        kind, value = outcome
        if kind == "new":
            result.records.append(value)
            bar.update(1)
            return
        result.rejected[kind] += 1
        if kind == "failed":
            result.errors.append(value)

    def on_flush() -> None:
        write_json(partial, {**state, "settings": settings, "records": result.records})

    bar = tqdm(total=n, initial=len(result.records), desc=f"generating with {client.spec}",
               unit="record", disable=not progress)  # fmt: skip
    try:
        while len(result.records) < n and result.attempts < budget:
            # One round asks exactly for what is missing, so it never makes more than n.
            size = min(n - len(result.records), budget - result.attempts)
            first = state["next_attempt"]
            state["next_attempt"] = first + size  # a resumed run never repeats a seed
            on_flush()
            numbers = range(first, first + size)
            run_concurrently(client, {k: k for k in numbers}, attempt, on_result, on_flush,
                             concurrency=concurrency, flush_interval=flush_interval,
                             progress=False)  # fmt: skip
            result.attempts += size
    finally:
        bar.close()
    if len(result.records) >= n:
        save_records(out, result.records, source=seed_data)
        partial.unlink(missing_ok=True)
    return result


def politeness_prompt(record: dict, politeness: str) -> str:
    """The book's prompt for a rewrite that is more `politeness` ("polite" or "impolite")."""
    return (
        f"Given the input `{format_input(record)}` "
        f"and correct output `{record['output']}`, "
        f"slightly rewrite the output to be more {politeness}. "
        "Keep the modification minimal. "
        "Only return the generated response and nothing else."
    )


def _clean_rewrite(reply: str) -> str:
    """The reply without surrounding whitespace or the backticks the prompt quotes with."""
    reply = reply.strip()
    if len(reply) > 1 and reply[0] == reply[-1] == "`":
        reply = reply.strip("`").strip()
    return reply


def record_key(record: dict) -> str:
    fields = [record["instruction"], record["input"], record["output"]]
    return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode()).hexdigest()[:20]


@dataclass
class PreferenceResult:
    records: list[dict]
    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # record key -> error


def make_preferences(
    client: JudgeClient,
    records: Sequence[dict],
    out: str | Path,
    *,
    data: str | Path | None = None,
    recipe: str = "both",
    seed: int = 0,
    concurrency: int = 1,
    flush_interval: float = 1.0,
    progress: bool = True,
) -> PreferenceResult:
    """Each record with `chosen` and `rejected` answers; written to `out` when all succeed.

    recipe "both": chosen is the LLM's more polite rewrite, rejected its less polite one.
    recipe "book": as the book's notebook, one rewrite per record, polite or impolite by a
    seeded coin; the polite rewrite is chosen over the original output, the original is
    chosen over the impolite rewrite. Records whose requests failed are asked again on
    the next run.
    """
    if recipe not in ("both", "book"):
        raise UserError(f"--recipe must be both or book, got {recipe!r}")
    out = Path(out)
    _outside_input(out, [Path(data) if data else None])
    settings = {"with": client.spec, "recipe": recipe, "seed": seed}
    partial = Path(f"{out}.partial")
    state = _load_state(partial, out, settings) or {}
    pairs: dict[str, dict] = dict(state.get("pairs", {}))
    keys = [record_key(record) for record in records]
    todo = {key: record for key, record in zip(keys, records, strict=True) if key not in pairs}
    failed: dict[str, str] = {}
    if progress and pairs:
        print(f"resuming: {len(set(keys) & set(pairs))} of {len(set(keys))} records already done")

    def rewrite(record: dict, politeness: str) -> str:
        text = _clean_rewrite(client.ask(politeness_prompt(record, politeness)))
        if not text:
            raise JudgeRequestError(f"the {politeness} rewrite came back empty")
        return text

    def pair(record: dict) -> dict | str:
        try:
            if recipe == "both":
                return {
                    "chosen": rewrite(record, "polite"),
                    "rejected": rewrite(record, "impolite"),
                }
            politeness = random.Random(f"{seed}:{record_key(record)}").choice(
                ["polite", "impolite"]
            )
            text = rewrite(record, politeness)
        except JudgeRequestError as error:
            return str(error)
        if politeness == "polite":
            return {"chosen": text, "rejected": record["output"]}
        return {"chosen": record["output"], "rejected": text}

    def on_result(key: str, outcome: dict | str) -> None:
        if isinstance(outcome, dict):
            pairs[key] = outcome
            failed.pop(key, None)
        else:
            failed[key] = outcome

    def on_flush() -> None:
        write_json(partial, {"settings": settings, "pairs": pairs})

    run_concurrently(client, todo, pair, on_result, on_flush, concurrency=concurrency,
                     flush_interval=flush_interval, progress=progress,
                     desc=f"rewriting with {client.spec}")  # fmt: skip
    result = PreferenceResult(
        records=[{**record, **pairs[key]} for key, record in zip(keys, records) if key in pairs],
        failed=failed,
    )
    result.done = len(result.records)
    if not failed:
        save_records(out, result.records, source=data)
        partial.unlink(missing_ok=True)
    return result
