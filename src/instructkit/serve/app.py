"""OpenAI- and Ollama-compatible HTTP API over an `Engine` (the protocol layer only).

OpenAI: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions`, with
`"stream": true` answered as server-sent events (`data: {...}` lines, then
`data: [DONE]`). Ollama: `GET /api/tags`, `GET /api/version`, `POST /api/chat`,
`POST /api/generate`, streaming newline-delimited JSON unless `"stream": false`. Plus
`GET /health`.

The request's `model` may be any string: a one-model server answers with its own model
and says its name in every response. Bad requests get a 4xx JSON error in the dialect of
the route (`{"error": {"message", "type", "param", "code"}}` under /v1,
`{"error": "..."}` under /api), never a 500: malformed JSON, missing or malformed
messages, temperature outside [0, 2], max tokens outside [1, context], a prompt that
fills the context. Sampling defaults to greedy decoding (temperature 0, as in the book)
when a request does not set a temperature; a reply that would run past the context is
cut there (finish reason "length").
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from instructkit import __version__
from instructkit.serve.engine import Engine, Generation, RequestError, SamplingParams
from instructkit.serve.web import is_public, web_router

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
ERROR_TYPES = {401: "authentication_error", 404: "not_found_error", 500: "server_error"}
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts
logger = logging.getLogger("instructkit.serve")


class APIError(Exception):
    """An error answered as JSON in the dialect of the route it happened on."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _error_response(
    request: Request, status: int, message: str, param=None, code=None
) -> JSONResponse:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status)
    kind = ERROR_TYPES.get(status, "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


# ---- request parsing: every check names the field and says what was expected -------------


async def _json_body(request: Request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise APIError(400, f"the request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, "the request holds text that is not valid Unicode (a lone surrogate)")
    return body


def _number(
    body: dict, key: str, low: float, high: float, *, low_open: bool = False
) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise APIError(400, f"'{key}' must be a number, got {json.dumps(value)}", key)
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise APIError(400, f"'{key}' must be in {bracket}{low:g}, {high:g}], got {value}", key)
    return float(value)


def _integer(body: dict, key: str, low: int | None = None, high: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(400, f"'{key}' must be an integer, got {json.dumps(value)}", key)
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            raise APIError(400, f"'{key}' must be at least {low}, got {value}", key)
        raise APIError(400, f"'{key}' must be from {low} to {high}, got {value}", key)
    return value


def _flag(body: dict, key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise APIError(400, f"'{key}' must be true or false, got {json.dumps(value)}", key)
    return value


def _stops(value, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return list(value)
    raise APIError(400, f"'{key}' must be a string or a list of strings", key)


def _content(message: dict, index: int) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: only text can be served
        texts = []
        for part in content:
            if not (
                isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                raise APIError(
                    400, f"messages[{index}].content: only text parts are supported", "messages"
                )
            texts.append(part["text"])
        return "".join(texts)
    raise APIError(400, f"messages[{index}].content must be a string", "messages")


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if messages is None:
        raise APIError(400, "'messages' is required: a list of {role, content} objects", "messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(
            400, "'messages' must be a non-empty list of {role, content} objects", "messages"
        )
    parsed = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise APIError(
                400, f"messages[{i}] must be an object with role and content", "messages"
            )
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise APIError(
                400,
                f"messages[{i}].role must be one of {', '.join(CHAT_ROLES)}, got {json.dumps(role)}",
                "messages",
            )
        parsed.append({"role": role, "content": _content(message, i)})
    return parsed


def _openai_params(body: dict, context: int) -> SamplingParams:
    max_tokens = _integer(body, "max_completion_tokens", 1, context)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, context)
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise APIError(
            400, f"'n' must be 1 (this server returns one choice), got {json.dumps(n)}", "n"
        )
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0, 2) or 0.0,
        top_p=_number(body, "top_p", 0, 1, low_open=True),
        seed=_integer(body, "seed", *SEED_RANGE),
        stop=_stops(body.get("stop"), "stop"),
    )


def _ollama_params(body: dict, context: int) -> SamplingParams:
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "'options' must be an object")
    num_predict = _integer(options, "num_predict", -2, context)
    if num_predict == 0:
        raise APIError(400, f"'num_predict' must be -1, -2 or from 1 to {context}, got 0")
    top_k = _integer(options, "top_k", 0)
    return SamplingParams(
        max_tokens=context if num_predict is not None and num_predict < 0 else num_predict,
        temperature=_number(options, "temperature", 0, 2) or 0.0,
        top_k=top_k or None,
        top_p=_number(options, "top_p", 0, 1, low_open=True),
        seed=_integer(options, "seed", *SEED_RANGE),
        stop=_stops(options.get("stop"), "stop"),
    )


def _start(make) -> Generation:
    """Build a generation, turning engine refusals (prompt too long, ...) into 400s."""
    try:
        return make()
    except RequestError as error:
        raise APIError(400, error.message, error.param, error.code) from None


# ---- response shapes ---------------------------------------------------------------------


def _usage(gen: Generation) -> dict:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
    }


def _guarded(chunks: Iterator[str], error_chunk: Callable[[str], str]) -> Iterator[str]:
    """A failure after the stream started ends it with an error event, not a dropped connection."""
    try:
        yield from chunks
    except Exception as error:
        logger.exception("generation failed mid-stream")
        yield error_chunk(f"generation failed: {type(error).__name__}: {error}")


def _sse_error(message: str) -> str:
    return _sse(
        {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
    )


def _ndjson_error(message: str) -> str:
    return json.dumps({"error": message}) + "\n"


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _ollama_final(gen: Generation, started: float) -> dict:
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


def create_app(engine: Engine, api_key: str | None = None, run_dir: Path | None = None) -> FastAPI:
    """The FastAPI app serving `engine` (and the run page for `run_dir`); with `api_key`,
    every route but /health and the pages (serve.web.is_public) needs the bearer token."""
    app = FastAPI(title="instructkit", version=__version__, docs_url=None, redoc_url=None)
    created = int(time.time())
    context = engine.context_length
    details = engine.details()

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return _error_response(request, error.status, error.message, error.param, error.code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return _error_response(request, error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception):
        logger.exception("request failed: %s %s", request.method, request.url.path)
        return _error_response(request, 500, f"internal error: {type(error).__name__}: {error}")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        return _error_response(request, 400, str(error.errors()))

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if api_key and not is_public(request.url.path):
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), api_key):
                return _error_response(
                    request, 401, "a valid 'Authorization: Bearer <key>' header is required"
                )
        return await call_next(request)

    @app.get("/health")
    def health():
        return {"status": "ok", "model": engine.name}

    app.include_router(web_router(run_dir, engine=engine, key_required=bool(api_key)))

    # ---- OpenAI ------------------------------------------------------------------------

    def model_card() -> dict:
        return {"id": engine.name, "object": "model", "created": created, "owned_by": "instructkit"}

    @app.get("/v1/models")
    def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    def get_model(model_id: str):
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _json_body(request)
        messages = _messages(body)
        params = _openai_params(body, context)
        stream = _flag(body, "stream", False)
        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and bool(
            stream_options.get("include_usage")
        )
        gen = _start(lambda: engine.chat(messages, params))
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": engine.name,
        }
        if not stream:
            text = await run_in_threadpool(gen.run)
            return {
                **base,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": gen.finish_reason,
                        "logprobs": None,
                    }
                ],
                "usage": _usage(gen),
                "system_fingerprint": None,
            }

        def events() -> Iterator[str]:
            chunk = {**base, "object": "chat.completion.chunk"}

            def choice(delta: dict, finish: str | None) -> dict:
                return {
                    **chunk,
                    "choices": [
                        {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                    ],
                }

            yield _sse(choice({"role": "assistant", "content": ""}, None))
            for piece in gen:
                yield _sse(choice({"content": piece}, None))
            yield _sse(choice({}, gen.finish_reason))
            if include_usage:
                yield _sse({**chunk, "choices": [], "usage": _usage(gen)})
            yield _sse("[DONE]")

        return StreamingResponse(_guarded(events(), _sse_error), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _json_body(request)
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if (
            not isinstance(prompts, list)
            or not prompts
            or not all(isinstance(p, str) for p in prompts)
        ):
            raise APIError(400, "'prompt' is required: a string or a list of strings", "prompt")
        params = _openai_params(body, context)
        stream = _flag(body, "stream", False)
        echo = _flag(body, "echo", False)
        gens = [_start(lambda p=p: engine.complete(p, params)) for p in prompts]
        base = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": engine.name,
        }

        def usage() -> dict:
            counts = [_usage(g) for g in gens]
            return {key: sum(c[key] for c in counts) for key in counts[0]}

        if not stream:
            texts = [await run_in_threadpool(g.run) for g in gens]
            choices = [
                {
                    "index": i,
                    "text": (g.prompt if echo else "") + text,
                    "logprobs": None,
                    "finish_reason": g.finish_reason,
                }
                for i, (g, text) in enumerate(zip(gens, texts, strict=True))
            ]
            return {**base, "choices": choices, "usage": usage()}

        def events() -> Iterator[str]:
            def choice(i: int, text: str, finish: str | None) -> dict:
                return {
                    **base,
                    "choices": [
                        {"index": i, "text": text, "logprobs": None, "finish_reason": finish}
                    ],
                }

            for i, gen in enumerate(gens):
                if echo:
                    yield _sse(choice(i, gen.prompt, None))
                for piece in gen:
                    yield _sse(choice(i, piece, None))
                yield _sse(choice(i, "", gen.finish_reason))
            yield _sse("[DONE]")

        return StreamingResponse(_guarded(events(), _sse_error), media_type="text/event-stream")

    # ---- Ollama ------------------------------------------------------------------------

    @app.get("/api/version")
    def version():
        return {"version": __version__}

    @app.get("/api/tags")
    def tags():
        return {
            "models": [
                {
                    "name": engine.name,
                    "model": engine.name,
                    "modified_at": datetime.fromtimestamp(created, UTC)
                    .isoformat()
                    .replace("+00:00", "Z"),
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
            ]
        }

    def ollama_reply(gen: Generation, stream: bool, field: str) -> dict | StreamingResponse:
        """One object, or NDJSON pieces then a final object with the counts."""
        started = time.perf_counter_ns()

        def piece(text: str) -> dict:
            if field == "message":
                return {"message": {"role": "assistant", "content": text}}
            return {"response": text}

        if not stream:
            return {
                "model": engine.name,
                "created_at": _now_iso(),
                **piece(gen.run()),
                **_ollama_final(gen, started),
            }

        def lines() -> Iterator[str]:
            for text in gen:
                yield (
                    json.dumps(
                        {
                            "model": engine.name,
                            "created_at": _now_iso(),
                            **piece(text),
                            "done": False,
                        }
                    )
                    + "\n"
                )
            final = {
                "model": engine.name,
                "created_at": _now_iso(),
                **piece(""),
                **_ollama_final(gen, started),
            }
            yield json.dumps(final) + "\n"

        return StreamingResponse(
            _guarded(lines(), _ndjson_error), media_type="application/x-ndjson"
        )

    @app.post("/api/chat")
    async def ollama_chat(request: Request):
        body = await _json_body(request)
        messages = _messages(body)
        params = _ollama_params(body, context)
        stream = _flag(body, "stream", True)
        gen = _start(lambda: engine.chat(messages, params))
        if not stream:
            return await run_in_threadpool(ollama_reply, gen, False, "message")
        return ollama_reply(gen, True, "message")

    @app.post("/api/generate")
    async def ollama_generate(request: Request):
        body = await _json_body(request)
        prompt = body.get("prompt", "")
        system = body.get("system") or ""
        if not isinstance(prompt, str) or not isinstance(system, str):
            raise APIError(400, "'prompt' and 'system' must be strings")
        params = _ollama_params(body, context)
        stream = _flag(body, "stream", True)
        if not prompt:  # Ollama's way to load a model: answer done at once
            return {
                "model": engine.name,
                "created_at": _now_iso(),
                "response": "",
                "done": True,
                "done_reason": "load",
            }
        if _flag(body, "raw", False):
            gen = _start(lambda: engine.complete(prompt, params))
        else:
            gen = _start(lambda: engine.instruct(prompt, system, params))
        if not stream:
            return await run_in_threadpool(ollama_reply, gen, False, "response")
        return ollama_reply(gen, True, "response")

    return app
