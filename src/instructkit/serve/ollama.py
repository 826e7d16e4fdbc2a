"""The Ollama dialect: `GET /api/tags`, `GET /api/version`, `POST /api/chat`, `POST /api/generate`.

Replies stream as newline-delimited JSON unless `"stream": false`; the last object says
`done` and carries the counts. Sampling settings come in `options` (num_predict -1 or -2:
up to the context; top_k 0: off).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

from fastapi import APIRouter, Request

from instructkit import __version__
from instructkit.serve import requests as parse
from instructkit.serve.engine import Engine, Generation, SamplingParams
from instructkit.serve.requests import (
    APIError,
    ReplyStream,
    engine_of,
    guarded,
    run_to_end,
    start,
)

router = APIRouter(prefix="/api")


def sampling(body: dict, engine: Engine) -> SamplingParams:
    context = engine.context_length
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "'options' must be an object")
    num_predict = parse.integer(options, "num_predict", -2, context)
    if num_predict == 0:
        raise APIError(400, f"'num_predict' must be -1, -2 or from 1 to {context}, got 0")
    max_tokens = context if num_predict is not None and num_predict < 0 else num_predict
    top_k = parse.integer(options, "top_k", 0)
    given = {} if top_k is None else {"top_k": top_k or None}
    return parse.sampling(options, engine.config, max_tokens, **given)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def final(gen: Generation, started: float) -> dict:
    """The closing fields of a reply: why it ended and the token counts."""
    total = time.perf_counter_ns() - started
    return {
        "done": True,
        "done_reason": gen.finish_reason,
        "total_duration": total,
        "load_duration": 0,
        "prompt_eval_count": gen.prompt_tokens,
        "prompt_eval_duration": 0,
        "eval_count": gen.completion_tokens,
        "eval_duration": total,
    }


async def answer(
    request: Request, gen: Generation, name: str, stream: bool, field: str
) -> dict | ReplyStream:
    """One object, or NDJSON pieces then a final object with the counts."""
    started = time.perf_counter_ns()

    def piece(text: str) -> dict:
        if field == "message":
            return {"message": {"role": "assistant", "content": text}}
        return {"response": text}

    def head() -> dict:
        return {"model": name, "created_at": iso(datetime.now(UTC))}

    if not stream:
        (text,) = await run_to_end(request, [gen])
        return {**head(), **piece(text), **final(gen, started)}

    def lines() -> Iterator[str]:
        for text in gen:
            yield json.dumps({**head(), **piece(text), "done": False}) + "\n"
        yield json.dumps({**head(), **piece(""), **final(gen, started)}) + "\n"

    def error_line(message: str) -> str:
        return json.dumps({"error": message}) + "\n"

    return ReplyStream(guarded(lines(), error_line), [gen], media_type="application/x-ndjson")


@router.get("/version")
def version():
    return {"version": __version__}


@router.get("/tags")
def tags(request: Request):
    engine = engine_of(request)
    details = engine.details()
    model = {
        "name": engine.name,
        "model": engine.name,
        "modified_at": iso(datetime.fromtimestamp(request.app.state.created, UTC)),
        "size": details["size"],
        "digest": uuid.uuid5(uuid.NAMESPACE_URL, engine.name).hex,
        "details": {
            "format": "safetensors",
            "family": "gpt2",
            "families": ["gpt2"],
            "parameter_size": details["parameter_size"],
            "quantization_level": details["dtype"].upper(),
        },
    }
    return {"models": [model]}


@router.post("/chat")
async def chat(request: Request):
    engine = engine_of(request)
    body = await parse.json_body(request)
    messages = parse.messages(body)
    params = sampling(body, engine)
    stream = parse.flag(body, "stream", True)
    gen = await start(lambda: engine.chat(messages, params))
    return await answer(request, gen, engine.name, stream, "message")


@router.post("/generate")
async def generate(request: Request):
    engine = engine_of(request)
    body = await parse.json_body(request)
    prompt = body.get("prompt", "")
    system = body.get("system") or ""
    if not isinstance(prompt, str) or not isinstance(system, str):
        raise APIError(400, "'prompt' and 'system' must be strings")
    params = sampling(body, engine)
    stream = parse.flag(body, "stream", True)
    if not prompt:  # Ollama's way to load a model: answer done at once
        now = iso(datetime.now(UTC))
        return {
            "model": engine.name,
            "created_at": now,
            "response": "",
            "done": True,
            "done_reason": "load",
        }
    if parse.flag(body, "raw", False):
        gen = await start(lambda: engine.complete(prompt, params))
    else:
        gen = await start(lambda: engine.instruct(prompt, system, params))
    return await answer(request, gen, engine.name, stream, "response")
