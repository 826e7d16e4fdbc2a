"""Model responses for instruction records (stage 4 of the pipeline).

`generate_responses` runs the model over records in length-sorted batches with the KV
cache (`instructkit.generate.generate_batch`), turns each output into a response the
book's way (text after the prompt, response header removed, stripped) and returns the
records with `model_response` added: the format of the book's
`instruction-data-with-response.json`. Progress is saved after every batch to
`OUT.partial`, together with the settings that produced it, so an interrupted run
resumes without redoing finished records; the final file is written atomically and the
progress file removed.

`load_for_generation` resolves a model spec to (model, tokenizer, prompt style); the
style comes from `--style`, else from the model directory's `instructkit.json`, else
the book's alpaca format. The server (`instructkit.serve`) loads its model the same way.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from instructkit.errors import DataError, ModelError, UserError
from instructkit.files import write_json

RESPONSE_KEY = "model_response"
DEFAULT_STYLE = "alpaca"


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


def model_directory(spec: str) -> Path | None:
    """The directory holding a model's files for a run dir or HF dir spec, else None."""
    path = Path(spec)
    if (path / "model").is_dir():
        return path / "model"
    return path if path.is_dir() else None


def resolve_style(spec: str, style: str | None = None):
    """The prompt style: explicit, else saved with the model, else the book's alpaca."""
    from instructkit.data import STYLE_NAMES, get_style

    if style is None:
        directory = model_directory(spec)
        if directory is not None:
            from instructkit.model import read_metadata

            style = read_metadata(directory).get("style")
    style = style or DEFAULT_STYLE
    if style not in STYLE_NAMES:
        raise UserError(f"unknown prompt style {style!r}; choose one of {', '.join(STYLE_NAMES)}")
    return get_style(style)


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but no CUDA device is available")
    return device


def load_for_generation(
    spec: str, style: str | None = None, tokenizer: str | None = None, device: str = "auto"
):
    """(model in eval mode on `device`, tokenizer, prompt style) for a model spec."""
    from instructkit.model import load_pretrained
    from instructkit.tokenizer import load_tokenizer

    prompt_style = resolve_style(spec, style)
    explicit = load_tokenizer(tokenizer) if tokenizer else None
    model, loaded = load_pretrained(spec, tokenizer=explicit)
    tok = explicit or loaded
    if tok is None:
        tok = load_tokenizer("gpt2")
    if tok.vocab_size > model.config.vocab_size:
        raise ModelError(
            f"the tokenizer has {tok.vocab_size} tokens but the model {spec} only "
            f"{model.config.vocab_size}; pass the model's own tokenizer with --tokenizer"
        )
    model.to(pick_device(device)).eval()
    return model, tok, prompt_style


def extract_response(style, prompt: str, generated: str) -> str:
    """The book's extraction: the text after the prompt, the response header removed, stripped."""
    return style.extract_response(prompt + generated, prompt)


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
    out_path: str | Path | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = 123,
    model_spec: str = "",
    progress: bool = True,
) -> list[dict]:
    """The records, each with `model_response`; saved (and resumed) at `out_path` when given."""
    from tqdm import tqdm

    from instructkit.generate import generate_batch

    if batch_size < 1 or max_new_tokens < 1:
        raise UserError("--batch-size and --max-new-tokens must be at least 1")
    prompts = [style.prompt(record) for record in records]
    prompt_ids = [tokenizer.encode(prompt) for prompt in prompts]
    settings = {
        "model": model_spec,
        "style": style.name,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_k": top_k,
        "seed": seed,
        "records": _fingerprint(records),
    }
    partial = Path(f"{out_path}.partial") if out_path else None
    done = _load_progress(partial, settings) if partial else {}
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
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        # Prompts longer than the context are cropped to their last tokens, as the book does.
        outputs = generate_batch(
            model,
            [prompt_ids[i] for i in batch],
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            eos_id=tokenizer.eos_id,
            seed=seed,
            batch_size=len(batch),
        )
        for i, new_ids in zip(batch, outputs, strict=True):
            done[i] = extract_response(style, prompts[i], tokenizer.decode(new_ids))
        if partial:
            write_json(partial, {"settings": settings, "responses": done})
        bar.update(len(batch))
    bar.close()

    results = [{**record, RESPONSE_KEY: done[i]} for i, record in enumerate(records)]
    if out_path:
        write_json(out_path, results)
        if partial:
            partial.unlink(missing_ok=True)
    return results


def respond(
    model,
    tokenizer,
    style,
    instruction: str,
    input_text: str = "",
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = 123,
) -> str:
    """One response to one instruction (the `--prompt` path)."""
    record = {"instruction": instruction, "input": input_text, "output": ""}
    return generate_responses(
        model,
        tokenizer,
        style,
        [record],
        batch_size=1,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        progress=False,
    )[0][RESPONSE_KEY]
