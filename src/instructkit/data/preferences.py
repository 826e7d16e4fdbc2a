"""Preference pairs for DPO: read, validate, tokenize, and batch chosen with rejected.

Two record forms are read (JSON list or JSONL): the book's
(`instruction`, `input`, `output`, `chosen`, `rejected`; `instruction-data-with-preference.json`)
and `{"prompt": text | [messages], "chosen": ..., "rejected": ...}`. A text prompt is the
instruction; a message list ending in a user turn is rendered by a style that lays out
conversations, or, for one user turn, becomes the instruction. Either way the run's prompt
style makes the prompt and each response is `prompt + response + end-of-text` (as SFT
trains it), with prompt targets -100. Validation reports every problem at once, each
naming the file and the record, as `load_instructions` does.

A batch of B pairs is one `Batch` of 2B rows, the chosen responses then the rejected ones,
so the policy scores both in one forward pass; `indices` key each pair's reference
log-probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from instructkit.data.chat_template import resolve_style
from instructkit.data.collate import Batch, InstructionCollator
from instructkit.data.dataset import Example
from instructkit.data.prompts import PromptStyle
from instructkit.data.records import (
    JSONL_SUFFIXES,
    Unreadable,
    _kind,
    _read_json_list,
    _read_jsonl,
    _read_text,
)
from instructkit.errors import DataError, UserError
from instructkit.tokenizer import as_tokenizer

ROLES = ("system", "user", "assistant")


def load_preferences(path: str | Path) -> list[dict]:
    """Read and validate preference records; each comes out with string `chosen` and
    `rejected` and either `instruction`/`input` or `messages`, plus its extra keys."""
    path = Path(path)
    text = _read_text(path)
    if not text.strip():
        raise DataError(f"{path}: empty file; expected a JSON list or JSONL of preference records")
    if path.suffix.lower() in JSONL_SUFFIXES or not text.lstrip().startswith("["):
        raw = _read_jsonl(text)
    else:
        raw = _read_json_list(path, text)
    records, problems = [], []
    for where, item in raw:
        if isinstance(item, Unreadable):
            problems.append(f"{path}: {where}{item}")
            continue
        record, record_problems = normalize_preference(item)
        problems.extend(f"{path}: {where}: {problem}" for problem in record_problems)
        records.append(record)
    if problems:
        raise DataError(problems)
    if not records:
        raise DataError(f"{path}: no records")
    return records


def normalize_preference(item: object) -> tuple[dict, list[str]]:
    """One record in canonical form, and its problems (without the file and record)."""
    if not isinstance(item, dict):
        return {}, [f"is {_kind(item)}, expected an object with a prompt, chosen and rejected"]
    problems = []
    record = dict(item)
    for name in ("chosen", "rejected"):
        value = item.get(name)
        if not isinstance(value, str) or not value.strip():
            reason = "missing" if value is None else f"is {_kind(value)}, expected text"
            reason = "is empty" if isinstance(value, str) else reason
            problems.append(f"field {name!r}: {reason}; every pair needs chosen and rejected text")
    if not problems and item["chosen"].strip() == item["rejected"].strip():
        problems.append("chosen and rejected are identical; a pair must prefer one answer")
    if "prompt" in item:
        record.pop("prompt")
        prompt = item["prompt"]
        if isinstance(prompt, str) and prompt.strip():
            record.update(instruction=prompt, input="")
        elif isinstance(prompt, list):
            problems.extend(_message_problems(prompt))
            record["messages"] = prompt
        else:
            problems.append(f"field 'prompt': is {_kind(prompt)}, expected text or messages")
    else:
        instruction = item.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            problems.append("needs a 'prompt' or a non-empty 'instruction'")
        record["input"] = item.get("input") or ""
        if not isinstance(record["input"], str):
            problems.append(f"field 'input': is {_kind(record['input'])}, expected a string")
    return record, problems


def _message_problems(messages: list) -> list[str]:
    if not messages:
        return ["field 'prompt': an empty message list"]
    problems = []
    for index, message in enumerate(messages):
        ok = (
            isinstance(message, dict)
            and message.get("role") in ROLES
            and isinstance(message.get("content"), str)
        )
        if not ok:
            problems.append(
                f"field 'prompt', message {index}: expected {{'role': system|user|assistant, "
                "'content': text}"
            )
    if not problems and messages[-1]["role"] != "user":
        problems.append("field 'prompt': the last message must be the user's")
    return problems


def pair_texts(style: PromptStyle, record: dict, answer: str) -> tuple[str, str]:
    """The prompt in the run's style (ending where the response starts) and the prompt
    followed by `answer`, as that style lays out an answer."""
    messages = record.get("messages")
    if messages is not None and getattr(style, "supports_conversations", False):
        reply = {"role": "assistant", "content": answer}
        return style.render(messages, add_generation_prompt=True), style.render([*messages, reply])
    if messages is not None:
        if len(messages) != 1:
            raise UserError(
                f"prompt style {style.name!r} formats one instruction; a multi-message prompt "
                "needs a style that lays out conversations (chatml or the model's chat template)"
            )
        record = {"instruction": messages[0]["content"], "input": ""}
    single = {"instruction": record["instruction"], "input": record["input"], "output": answer}
    prompt = style.prompt(single)
    return prompt, prompt + style.response(single)


@dataclass(frozen=True, slots=True)
class PreferencePair:
    """A tokenized pair: prompt + chosen, prompt + rejected, and the pair's key."""

    chosen: Example
    rejected: Example
    index: int

    def __len__(self) -> int:  # what length grouping sorts by
        return max(len(self.chosen), len(self.rejected))


class PreferenceDataset(torch.utils.data.Dataset):
    """Pairs tokenized once; `index` = `offset` + position, unique across a run's splits."""

    def __init__(self, records: list[dict], tokenizer, style="alpaca", offset: int = 0):
        self.tokenizer = as_tokenizer(tokenizer)
        self.style = resolve_style(style, self.tokenizer)  # None: the model's chat template
        self.examples = [self._tokenize(record, offset + i) for i, record in enumerate(records)]

    def _tokenize(self, record: dict, index: int) -> PreferencePair:
        pair = []
        for name in ("chosen", "rejected"):
            prompt, text = pair_texts(self.style, record, record[name])
            prompt_ids = self.tokenizer.encode(prompt)
            ids = self.tokenizer.encode(text)
            shared = next(
                (i for i, (a, b) in enumerate(zip(ids, prompt_ids)) if a != b),
                min(len(ids), len(prompt_ids)),
            )
            pair.append(Example(ids, shared))
        return PreferencePair(pair[0], pair[1], index)

    def __getitem__(self, index: int) -> PreferencePair:
        return self.examples[index]

    def __len__(self) -> int:
        return len(self.examples)


@dataclass
class PreferenceBatch:
    """B pairs as one `Batch` of 2B rows (chosen rows first), and each pair's key."""

    batch: Batch
    indices: torch.Tensor  # (B,) long
    num_records: int

    def to(self, device: str | torch.device, non_blocking: bool = False) -> PreferenceBatch:
        return PreferenceBatch(
            self.batch.to(device, non_blocking),
            self.indices.to(device, non_blocking=non_blocking),
            self.num_records,
        )


class PreferenceCollator:
    """Pairs to a `PreferenceBatch`: prompt targets masked, end-of-text target kept."""

    pack = False  # build_loader asks; pairs are never packed

    def __init__(self, pad_token_id: int, allowed_max_length: int | None = None):
        self.rows = InstructionCollator(
            pad_token_id, allowed_max_length=allowed_max_length, mask_prompt=True
        )
        self.allowed_max_length = allowed_max_length

    def __call__(self, pairs: Sequence[PreferencePair]) -> PreferenceBatch:
        examples = [pair.chosen for pair in pairs] + [pair.rejected for pair in pairs]
        indices = torch.tensor([pair.index for pair in pairs], dtype=torch.long)
        return PreferenceBatch(self.rows(examples), indices, len(pairs))
