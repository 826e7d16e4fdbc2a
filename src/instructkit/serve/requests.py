"""Request parsing shared by the OpenAI and Ollama routers: every check names the field.

A bad request becomes an `APIError`, which the app answers as a 4xx JSON error in the
dialect of the route (never a 500): a body over the size limit (413), malformed JSON,
missing or malformed messages, temperature outside [0, 2], max tokens outside
[1, context], a prompt that fills the context. Settings a request leaves out take the
server's `GenerationConfig`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterator

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from instructkit.config import SEED_RANGE, GenerationConfig
from instructkit.serve.engine import Engine, Generation, RequestError, SamplingParams

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
logger = logging.getLogger("instructkit.serve")


class APIError(Exception):
    """An error answered as JSON in the dialect of the route it happened on."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def engine_of(request: Request) -> Engine:
    """The engine of the app that received `request` (set by `create_app`)."""
    return request.app.state.engine


async def json_body(request: Request) -> dict:
    """The JSON object a request sent, read up to the app's `max_body_bytes` (413 past it,
    also for a body sent without Content-Length) and parsed off the event loop."""
    limit = request.app.state.max_body_bytes
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, too_large(limit))
        chunks.append(chunk)
    return await run_in_threadpool(parse_json, b"".join(chunks))


def too_large(limit: int) -> str:
    return f"the request body is larger than {limit:,} bytes (serve --max-body-bytes)"


def parse_json(raw: bytes) -> dict:
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


def number(
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


def integer(body: dict, key: str, low: int | None = None, high: int | None = None) -> int | None:
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


def flag(body: dict, key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise APIError(400, f"'{key}' must be true or false, got {json.dumps(value)}", key)
    return value


def stops(value, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return list(value)
    raise APIError(400, f"'{key}' must be a string or a list of strings", key)


def messages(body: dict) -> list[dict]:
    """Chat messages as {role, content} with text content."""
    given = body.get("messages")
    if given is None:
        raise APIError(400, "'messages' is required: a list of {role, content} objects", "messages")
    if not isinstance(given, list) or not given:
        raise APIError(
            400, "'messages' must be a non-empty list of {role, content} objects", "messages"
        )
    parsed = []
    for i, message in enumerate(given):
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


def sampling(
    values: dict, defaults: GenerationConfig, max_tokens: int | None, **given
) -> SamplingParams:
    """The server's `defaults` with what the request set: `given` (parsed by the dialect),
    temperature, top_p and seed (the same keys in both dialects), and its stop strings."""
    for key, value in (
        ("temperature", number(values, "temperature", 0, 2)),
        ("top_p", number(values, "top_p", 0, 1, low_open=True)),
        ("seed", integer(values, "seed", *SEED_RANGE)),
    ):
        if value is not None:
            given[key] = value
    config = dataclasses.replace(defaults, **given)
    return SamplingParams(config, max_tokens, stops(values.get("stop"), "stop"))


async def start(make: Callable[[], Generation]) -> Generation:
    """Build a generation off the event loop (tokenising a long prompt takes a while, and
    /health must answer meanwhile), turning engine refusals (prompt too long, ...) into 400s."""
    try:
        return await run_in_threadpool(make)
    except RequestError as error:
        raise APIError(400, error.message, error.param, error.code) from None


def guarded(chunks: Iterator[str], error_chunk: Callable[[str], str]) -> Iterator[str]:
    """A failure after the stream started ends it with an error event, not a dropped connection."""
    try:
        yield from chunks
    except Exception as error:
        logger.exception("generation failed mid-stream")
        yield error_chunk(f"generation failed: {type(error).__name__}: {error}")


class ReplyStream(StreamingResponse):
    """A streamed reply that cancels its generations however the response ends: a client
    that goes away mid-stream frees its rows in the batch at the decode loop's next step."""

    def __init__(self, chunks: Iterator[str], gens: list[Generation], media_type: str):
        super().__init__(chunks, media_type=media_type)
        self.gens = gens

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            for gen in self.gens:
                gen.cancel()


async def run_to_end(request: Request, gens: list[Generation]) -> list[str]:
    """Whole replies, generated off the event loop (together: they share the batch); a
    client that goes away before they are done cancels them."""
    work = asyncio.ensure_future(asyncio.gather(*(run_in_threadpool(g.run) for g in gens)))
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            for gen in gens:
                gen.cancel()
        return await work
    finally:
        gone.cancel()


async def _disconnect(request: Request) -> None:
    """Return when the client disconnects (the body has been read: nothing else comes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
