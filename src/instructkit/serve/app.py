"""OpenAI- and Ollama-compatible HTTP API over an `Engine`: the app that holds both routers.

The routes live in `serve.openai` (/v1) and `serve.ollama` (/api), their request parsing
in `serve.requests`; this module adds what they share: the bearer-token check, `GET
/health`, and errors as JSON in the dialect of the route (`{"error": {"message", "type",
"param", "code"}}` outside /api, `{"error": "..."}` under /api). Sampling defaults to
the server's `GenerationConfig` (greedy decoding, as in the book, unless `serve` was given
other flags) for whatever a request does not set.
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from instructkit import __version__
from instructkit.constants import MAX_BODY_BYTES
from instructkit.serve import ollama, openai
from instructkit.serve.engine import Engine
from instructkit.serve.requests import APIError, too_large
from instructkit.serve.web import is_public, web_router

ERROR_TYPES = {401: "authentication_error", 404: "not_found_error", 500: "server_error"}
logger = logging.getLogger("instructkit.serve")


def error_response(
    request: Request, status: int, message: str, param=None, code=None
) -> JSONResponse:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status)
    kind = ERROR_TYPES.get(status, "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def create_app(
    engine: Engine | None,
    api_key: str | None = None,
    run_dir: Path | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The FastAPI app serving `engine` (and the run page for `run_dir`; no engine serves only
    that); with `api_key`, every route but /health and the pages (serve.web.is_public) needs
    the bearer token. A request body over `max_body_bytes` gets a 413 (`requests.json_body`;
    one that says its size up front, before it is read)."""
    app = FastAPI(title="instructkit", version=__version__, docs_url=None, redoc_url=None)
    app.state.engine = engine
    app.state.created = int(time.time())
    app.state.max_body_bytes = max_body_bytes
    add_error_handlers(app)

    @app.middleware("http")
    async def cap_body(request: Request, call_next):
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            return error_response(request, 413, too_large(max_body_bytes))
        return await call_next(request)

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if api_key and not is_public(request.url.path):
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), api_key):
                return error_response(
                    request, 401, "a valid 'Authorization: Bearer <key>' header is required"
                )
        return await call_next(request)

    @app.get("/health")
    def health():
        return {"status": "ok", "model": engine.name if engine is not None else None}

    app.include_router(web_router(run_dir, engine=engine, key_required=bool(api_key)))
    if engine is not None:
        app.include_router(openai.router)
        app.include_router(ollama.router)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every failure, ours or the framework's, answered as JSON in the route's dialect."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return error_response(request, error.status, error.message, error.param, error.code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return error_response(request, error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception):
        logger.exception("request failed: %s %s", request.method, request.url.path)
        return error_response(request, 500, f"internal error: {type(error).__name__}: {error}")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        return error_response(request, 400, str(error.errors()))
