"""`instructkit serve`: an OpenAI- and Ollama-compatible HTTP server for a model."""

from __future__ import annotations

import argparse
import os
import sys

from instructkit.commands import HelpFormatter, add_model_arguments
from instructkit.commands.flags import add_generation_flags, generation_config
from instructkit.constants import DEFAULT_MAX_BATCH, MAX_BODY_BYTES


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over OpenAI- and Ollama-compatible HTTP APIs",
        description=(
            "Serve a model: OpenAI (/v1/models, /v1/chat/completions, /v1/completions) and\n"
            "Ollama (/api/tags, /api/chat, /api/generate) APIs, plus /health. Chat messages go\n"
            "through the model's prompt style: the last user message is the instruction, system\n"
            "messages are the input. The sampling flags are the defaults for requests that do\n"
            "not set a value: replies are greedy unless --temperature or the request sets one.\n"
            "In a browser: a chat page at /, and for a run directory its loss curve, config\n"
            "and scored test responses at /run (--run RUN alone: only that page, also while\n"
            "the run is still training).\n\n"
            "  instructkit serve --model runs/x       # then open http://127.0.0.1:8000/\n"
            "  instructkit serve --run runs/x --port 8001\n"
            '  curl localhost:8000/v1/chat/completions -d \'{"messages":[{"role":"user","content":"Hi"}]}\''
        ),
        formatter_class=HelpFormatter,
    )
    add_model_arguments(parser, required=False)
    parser.add_argument(
        "--run",
        dest="run_dir",
        metavar="RUN",
        help="run directory for the /run page (default: --model when it is a run directory); "
        "without --model, serve only that page",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (loopback only by default)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on every route but /health; $INSTRUCTKIT_API_KEY when not given",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=MAX_BODY_BYTES,
        metavar="N",
        help="largest request body accepted; bigger ones get HTTP 413",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        metavar="N",
        help="most requests decoded together (continuous batching); more wait for a free row",
    )
    parser.add_argument(
        "--name", help="model name shown to clients; when not given, the run or model dir name"
    )
    add_generation_flags(parser)
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn's log level",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from instructkit.errors import UserError
    from instructkit.serve import LOOPBACK, listen, load_engine, run_server
    from instructkit.serve.web import check_run_dir, run_dir_of

    if not args.model and not args.run_dir:
        raise UserError("give --model (a model to serve) or --run (a run directory to look at)")
    run_dir = check_run_dir(args.run_dir) if args.run_dir else run_dir_of(args.model)
    if args.api_key is not None and not args.api_key.strip():
        raise UserError(
            "--api-key is empty, which would turn authentication off; give a key, "
            "or leave the flag out to serve without one"
        )
    api_key = args.api_key or os.environ.get("INSTRUCTKIT_API_KEY") or None
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be from 0 to 65535, got {args.port}")
    if args.max_body_bytes < 1:
        raise UserError(f"--max-body-bytes must be at least 1, got {args.max_body_bytes}")
    if args.max_batch < 1:
        raise UserError(f"--max-batch must be at least 1, got {args.max_batch}")
    config = generation_config(args)
    sock = listen(args.host, args.port)  # a busy port fails before the model loads
    engine = None
    if args.model:
        engine = load_engine(
            args.model,
            style=args.style,
            tokenizer=args.tokenizer,
            device=args.device,
            name=args.name,
            config=config,
            max_batch=args.max_batch,
        )
    if args.host not in LOOPBACK and not api_key:
        print(
            f"warning: serving on {args.host} without --api-key: anyone who can reach it can use it",
            file=sys.stderr,
        )
    url = f"http://{args.host}:{sock.getsockname()[1]}"
    if engine is not None:
        print(
            f"serving {engine.name} (style {engine.style.name}, context {engine.context_length}) "
            f"on {url} (chat page: {url}/)",
            file=sys.stderr,
        )
    if run_dir:
        print(f"run page for {run_dir}: {url}/run", file=sys.stderr)
    run_server(
        engine,
        api_key=api_key,
        log_level=args.log_level,
        sock=sock,
        run_dir=run_dir,
        max_body_bytes=args.max_body_bytes,
    )
    return 0
