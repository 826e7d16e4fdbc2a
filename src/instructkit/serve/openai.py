"""The OpenAI dialect: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions`.

`"stream": true` is answered as server-sent events (`data: {...}` lines, then
`data: [DONE]`). The request's `model` may be any string: a one-model server answers with
its own model and says its name in every response.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

from fastapi import APIRouter, Request

from instructkit.serve import requests as parse
from instructkit.serve.engine import Engine, Generation, SamplingParams
from instructkit.serve.requests import APIError, ReplyStream, engine_of, guarded, run_to_end, start

router = APIRouter(prefix="/v1")


def sampling(body: dict, engine: Engine) -> SamplingParams:
    context = engine.context_length
    max_tokens = parse.integer(body, "max_completion_tokens", 1, context)
    if max_tokens is None:
        max_tokens = parse.integer(body, "max_tokens", 1, context)
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise APIError(
            400, f"'n' must be 1 (this server returns one choice), got {json.dumps(n)}", "n"
        )
    return parse.sampling(body, engine.config, max_tokens)


def usage(gen: Generation) -> dict:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
    }


def sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def sse_error(message: str) -> str:
    return sse({"error": {"message": message, "type": "server_error", "param": None, "code": None}})


def event_stream(events: Iterator[str], gens: list[Generation]) -> ReplyStream:
    return ReplyStream(guarded(events, sse_error), gens, media_type="text/event-stream")


def model_card(request: Request, engine: Engine) -> dict:
    created = request.app.state.created
    return {"id": engine.name, "object": "model", "created": created, "owned_by": "instructkit"}


@router.get("/models")
def list_models(request: Request):
    engine = engine_of(request)
    return {"object": "list", "data": [model_card(request, engine)]}


@router.get("/models/{model_id:path}")
def get_model(model_id: str, request: Request):
    engine = engine_of(request)
    return model_card(request, engine)


@router.post("/chat/completions")
async def chat_completions(request: Request):
    engine = engine_of(request)
    body = await parse.json_body(request)
    messages = parse.messages(body)
    params = sampling(body, engine)
    stream = parse.flag(body, "stream", False)
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    gen = await start(lambda: engine.chat(messages, params))
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": engine.name}
    if not stream:
        (text,) = await run_to_end(request, [gen])
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": gen.finish_reason,
            "logprobs": None,
        }
        return {
            **base,
            "object": "chat.completion",
            "choices": [choice],
            "usage": usage(gen),
            "system_fingerprint": None,
        }
    return event_stream(
        chat_events(gen, {**base, "object": "chat.completion.chunk"}, include_usage), [gen]
    )


def chat_events(gen: Generation, chunk: dict, include_usage: bool) -> Iterator[str]:
    """A role delta, a delta per text piece, the finish reason, usage if asked, [DONE]."""

    def choice(delta: dict, finish: str | None) -> dict:
        return {
            **chunk,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }

    yield sse(choice({"role": "assistant", "content": ""}, None))
    for piece in gen:
        yield sse(choice({"content": piece}, None))
    yield sse(choice({}, gen.finish_reason))
    if include_usage:
        yield sse({**chunk, "choices": [], "usage": usage(gen)})
    yield sse("[DONE]")


@router.post("/completions")
async def completions(request: Request):
    engine = engine_of(request)
    body = await parse.json_body(request)
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise APIError(400, "'prompt' is required: a string or a list of strings", "prompt")
    params = sampling(body, engine)
    stream = parse.flag(body, "stream", False)
    echo = parse.flag(body, "echo", False)
    gens = [await start(lambda p=p: engine.complete(p, params)) for p in prompts]
    base = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": engine.name,
    }
    if stream:
        return event_stream(completion_events(gens, base, echo), gens)
    texts = await run_to_end(request, gens)
    choices = [
        {
            "index": i,
            "text": (g.prompt if echo else "") + text,
            "logprobs": None,
            "finish_reason": g.finish_reason,
        }
        for i, (g, text) in enumerate(zip(gens, texts, strict=True))
    ]
    counts = [usage(g) for g in gens]
    return {**base, "choices": choices, "usage": {k: sum(c[k] for c in counts) for k in counts[0]}}


def completion_events(gens: list[Generation], base: dict, echo: bool) -> Iterator[str]:
    """Each prompt's pieces in turn (its choice index on each), a finish event each, [DONE]."""

    def choice(i: int, text: str, finish: str | None) -> dict:
        return {
            **base,
            "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": finish}],
        }

    for i, gen in enumerate(gens):
        if echo:
            yield sse(choice(i, gen.prompt, None))
        for piece in gen:
            yield sse(choice(i, piece, None))
        yield sse(choice(i, "", gen.finish_reason))
    yield sse("[DONE]")
