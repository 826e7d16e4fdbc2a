"""Serving a fine-tuned model over HTTP with OpenAI- and Ollama-compatible APIs.

`Engine` (serve.engine) is the model side; `create_app` (serve.app) the protocol side,
with one router per dialect (serve.openai, serve.ollama) over shared request parsing
(serve.requests). `load_engine` builds an engine from a model spec the way `instructkit
generate` loads models, and `run_server` runs the app with uvicorn.
"""

from __future__ import annotations

import socket
from pathlib import Path

from instructkit.config import GenerationConfig
from instructkit.constants import DEFAULT_MAX_BATCH, MAX_BODY_BYTES
from instructkit.errors import UserError
from instructkit.serve.engine import Engine, RequestError, SamplingParams, messages_to_record

__all__ = [
    "Engine",
    "RequestError",
    "SamplingParams",
    "load_engine",
    "messages_to_record",
    "model_name",
    "run_server",
]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def model_name(spec: str) -> str:
    """What clients see as the model: a run or model directory's name, else the spec itself."""
    path = Path(spec)
    if path.is_dir():
        resolved = path.resolve()
        return resolved.parent.name if resolved.name == "model" else resolved.name
    return spec


def load_engine(
    spec: str,
    *,
    style: str | None = None,
    tokenizer: str | None = None,
    device: str = "auto",
    name: str | None = None,
    config: GenerationConfig | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Engine:
    """An engine for a model spec; `config` holds the defaults of requests that set nothing,
    `max_batch` caps the requests decoded at once."""
    from instructkit.loading import load_for_generation

    model, tok, prompt_style = load_for_generation(
        spec, style=style, tokenizer=tokenizer, device=device
    )
    return Engine(model, tok, prompt_style, name or model_name(spec), config, max_batch)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, so a busy port is a one-line error rather than a log dump."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return sock


def run_server(
    engine: Engine | None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    log_level: str = "info",
    sock: socket.socket | None = None,
    run_dir: Path | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> None:
    """Serve until interrupted, on `sock` when given (bound already), else on host:port;
    without an engine, only the run page for `run_dir`."""
    import uvicorn

    from instructkit.serve.app import create_app
    from instructkit.serve.web import create_run_app

    sock = sock or listen(host, port)
    if engine is None:
        app = create_run_app(run_dir, api_key=api_key)
    else:
        app = create_app(engine, api_key=api_key, run_dir=run_dir, max_body_bytes=max_body_bytes)
    config = uvicorn.Config(app, log_level=log_level)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        if engine is not None:
            engine.close()
