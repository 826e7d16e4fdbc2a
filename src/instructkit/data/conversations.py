"""Conversations to training examples: token ids plus a mask of the tokens the loss learns.

A chat model should learn to answer, not to predict what users write: by default only
the assistant turns are trained (each answer and its end-of-turn token, in every turn of
a multi-turn conversation; not the whitespace a template puts after that token, which
generation never produces); system and user tokens get no loss. Chat templates do
not say where an answer starts, so we find out the way TRL and axolotl do without
`{% generation %}` markers: render the conversation up to each assistant turn with the
generation prompt (the answer starts where that text ends) and up to the end of the turn
(the answer ends there). Templates that render earlier turns differently once later ones
follow (Qwen3 drops the empty think block of all but the last answer) are handled by
finding the answer's text and its closing text in the full rendering instead. The text
is then tokenized once, whole, and each character boundary is mapped to the number of
leading tokens it shares with the full text's tokens, as `InstructionDataset` does for
prompts (a token that straddles an answer's start is trained).
"""

from __future__ import annotations

from instructkit.config import TRAIN_ON  # what the loss sees: assistant turns, or all
from instructkit.data.prompts import PromptStyle
from instructkit.errors import UserError


def is_conversation(record: dict) -> bool:
    return "messages" in record


def to_messages(record: dict) -> list[dict]:
    """A record's turns: its messages, or an instruction record as a user turn + an answer."""
    if is_conversation(record):
        return record["messages"]
    user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    messages = [{"role": "user", "content": user}]
    if record.get("output") is not None:
        messages.append({"role": "assistant", "content": record["output"]})
    return messages


def assistant_spans(style: PromptStyle, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of every assistant turn in it."""
    full = style.render(messages)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = shared_prefix(style.render(messages[:index], add_generation_prompt=True), full)
        end = _turn_end(style, messages, index, full, start)
        # Up to the end-of-turn token; ChatML's newline after `<|im_end|>` is never generated.
        spans.append((start, max(start, len(full[:end].rstrip()))))
    return full, spans


def _turn_end(style: PromptStyle, messages: list[dict], index: int, full: str, start: int) -> int:
    """Where assistant turn `index` ends in `full`, its end-of-turn text included."""
    through = style.render(messages[: index + 1])
    if len(through) > start and full.startswith(through):
        return len(through)
    answer = messages[index]["content"].strip()
    at = full.find(answer, start)
    if not answer or at < 0 or answer not in through:
        raise UserError(
            f"chat template: cannot find assistant turn {index} ({answer[:40]!r}) in the rendered "
            "conversation, so its tokens cannot be marked for training; use --train-on all"
        )
    end = at + len(answer)
    closing = through[through.rfind(answer) + len(answer) :]
    return end + len(closing) if closing and full.startswith(closing, end) else end


def tokenize_conversation(
    style: PromptStyle, tokenizer, messages: list[dict], train_on: str = "assistant"
) -> tuple[list[int], tuple[bool, ...]]:
    """`(ids, loss_mask)`: loss_mask[i] says whether token i is a training target."""
    if train_on not in TRAIN_ON:
        raise UserError(f"train_on: {train_on!r} is not one of {', '.join(TRAIN_ON)}")
    if train_on == "all":
        ids = tokenizer.encode(style.render(messages))
        return ids, (True,) * len(ids)
    full, spans = assistant_spans(style, messages)
    ids = tokenizer.encode(full)
    mask = [False] * len(ids)
    for start, end in spans:
        first = _shared_tokens(ids, tokenizer.encode(full[:start]))
        last = len(ids) if end == len(full) else _shared_tokens(ids, tokenizer.encode(full[:end]))
        mask[first:last] = [True] * (last - first)
    return ids, tuple(mask)


def shared_prefix(first: str, second: str) -> int:
    """How many leading characters two texts share."""
    count = 0
    for a, b in zip(first, second):
        if a != b:
            break
        count += 1
    return count


def _shared_tokens(ids: list[int], prefix_ids: list[int]) -> int:
    """How many leading tokens of the full text the prefix's own tokens match."""
    count = 0
    for ours, theirs in zip(ids, prefix_ids):
        if ours != theirs:
            break
        count += 1
    return count
