"""Model responses for instruction records (stage 4 of the pipeline).

`generate_responses` runs the model over records in length-sorted batches with the KV
cache (`instructkit.generate.generate_batch`), turns each output into a response the
book's way (text after the prompt, response header removed, stripped) and returns the
records with `model_response` added: the format of the book's
`instruction-data-with-response.json` (a conversation also gets the book's `instruction`,
`input` and reference `output`, so `evaluate` scores it unchanged). Progress is saved after every batch to
`OUT.partial`, together with the settings that produced it, so an interrupted run
resumes without redoing finished records; the final file is written atomically and the
progress file removed. Loading the model is `instructkit.loading`'s job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from instructkit.config import GenerationConfig
from instructkit.errors import DataError, UserError
from instructkit.files import write_json

RESPONSE_KEY = "model_response"


def load_responses(path: str | Path, response_key: str = RESPONSE_KEY) -> list[dict]:
    """Records that each carry a string response (the book's format), all problems reported at once."""
    from instructkit.data import load_instructions

    records = load_instructions(path)
    problems = [
        f"{path}: record {i} has no string {response_key!r} "
        f"(got {type(record.get(response_key)).__name__}); generate responses first"
        for i, record in enumerate(records)
        if not isinstance(record.get(response_key), str)
    ]
    if problems:
        raise DataError(problems)
    return records


def extract_response(style, prompt: str, generated: str) -> str:
    """The book's extraction: the text after the prompt, the response header removed, stripped."""
    return style.extract_response(prompt + generated, prompt)


def book_fields(record: dict) -> dict:
    """For a conversation, the book's fields that `evaluate` reads: the last user turn as the
    `instruction`, the turns before it as the `input`, the last answer (the one the model
    was asked to give again) as the reference `output`. Nothing for instruction records."""
    if "messages" not in record:
        return {}
    *before, answer = record["messages"]
    last = max(i for i, message in enumerate(before) if message["role"] == "user")
    context = "\n\n".join(f"{m['role']}: {m['content']}" for m in before[:last])
    return {"instruction": before[last]["content"], "input": context, "output": answer["content"]}


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[
        :16
    ]


def _load_progress(path: Path, settings: dict) -> dict[int, str]:
    """Finished responses from an interrupted run with the same settings, else nothing."""
    if not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("settings") != settings:
            print(f"note: {path} was made with other settings or records; starting over")
            return {}
        return {int(i): str(text) for i, text in saved["responses"].items()}
    except (OSError, ValueError, KeyError, AttributeError):
        print(f"note: {path} is not a readable progress file; starting over")
        return {}


def generate_responses(
    model,
    tokenizer,
    style,
    records: list[dict],
    *,
    config: GenerationConfig | None = None,
    out_path: str | Path | None = None,
    model_spec: str = "",
    progress: bool = True,
    **settings: Any,
) -> list[dict]:
    """The records, each with `model_response`; saved (and resumed) at `out_path` when given.

    `settings` are `GenerationConfig` fields that override `config` (e.g. batch_size=32).
    """
    from tqdm import tqdm

    # Looked up at call time, so tests can interrupt generation by patching the module.
    import instructkit.generate as generation

    config = dataclasses.replace(config or GenerationConfig(), **settings)
    prompts = [style.prompt(record) for record in records]
    prompt_ids = [tokenizer.encode(prompt) for prompt in prompts]
    fingerprint = {
        "model": model_spec,
        "style": style.name,
        "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "top_k": config.top_k,
        "top_p": config.top_p,
        "seed": config.seed,
        "records": _fingerprint(records),
    }
    partial = Path(f"{out_path}.partial") if out_path else None
    done = _load_progress(partial, fingerprint) if partial else {}
    done = {i: text for i, text in done.items() if 0 <= i < len(records)}
    todo = sorted(
        (i for i in range(len(records)) if i not in done), key=lambda i: -len(prompt_ids[i])
    )
    if done and progress:
        print(f"resuming: {len(done)} of {len(records)} responses already generated")

    bar = tqdm(
        total=len(records),
        initial=len(done),
        desc="generating",
        unit="record",
        disable=not progress,
    )
    for start in range(0, len(todo), config.batch_size):
        batch = todo[start : start + config.batch_size]
        # Prompts longer than the context are cropped to their last tokens, as the book does.
        outputs = generation.generate_batch(
            model,
            [prompt_ids[i] for i in batch],
            config=dataclasses.replace(config, batch_size=len(batch)).for_tokenizer(tokenizer),
        )
        for i, new_ids in zip(batch, outputs, strict=True):
            done[i] = extract_response(style, prompts[i], tokenizer.decode(new_ids))
        if partial:
            write_json(partial, {"settings": fingerprint, "responses": done})
        bar.update(len(batch))
    bar.close()

    results = [
        {**record, **book_fields(record), RESPONSE_KEY: done[i]} for i, record in enumerate(records)
    ]
    if out_path:
        write_json(out_path, results)
        if partial:
            partial.unlink(missing_ok=True)
    return results


def check_prompt_fits(num_tokens: int, model, what: str = "the prompt") -> None:
    """One prompt typed by a user must fit the context with room for a reply: the book's
    crop to the last tokens would silently answer a question nobody asked (serve says 400)."""
    context = int(model.config.context_length)
    if num_tokens >= context:
        raise UserError(
            f"{what} is {num_tokens:,} tokens; this model's context is {context:,} tokens "
            "and the reply needs at least one"
        )


def respond(
    model,
    tokenizer,
    style,
    instruction: str,
    input_text: str = "",
    *,
    config: GenerationConfig | None = None,
    **settings: Any,
) -> str:
    """One response to one instruction (the `--prompt` path); UserError when it does not fit."""
    record = {"instruction": instruction, "input": input_text, "output": ""}
    check_prompt_fits(len(tokenizer.encode(style.prompt(record))), model)
    answered = generate_responses(
        model, tokenizer, style, [record], config=config, progress=False, **settings
    )
    return answered[0][RESPONSE_KEY]
