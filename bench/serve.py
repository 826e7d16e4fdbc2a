"""Benchmark: `instructkit serve` under 16 concurrent streaming chat requests against one at a time.

The server runs as a subprocess (`python -m instructkit serve`, default model
`random:gpt2-small`: GPT-2's 124M shape with random weights, fp32, CPU, GPT-2's tokenizer,
alpaca prompts), so client and server do not share an interpreter. The client sends the
first `--requests` instructions of the book's test split as streaming OpenAI chat requests
(greedy, `max_tokens` fixed; random weights rarely produce the end token, so nearly every
reply is that long): first one at a time, then all at once. It reports aggregate new
tokens per second (completion tokens from `usage` / wall time of the whole round), time to
first token (request sent to first non-empty content delta) p50 and p95, and whether every
concurrent reply equals its one-at-a-time reply.

    python bench/serve.py                    # 16 requests x 64 tokens, --max-batch 16
    python bench/serve.py --model random:tiny --max-tokens 16   # a quick smoke run

Offline, give GPT-2's vocabulary with `--tokenizer PATH/gpt2.tiktoken`, and the book's data
with INSTRUCTKIT_BOOK_DATA when it is not beside the checkout (see bench_common).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from bench_common import load_book_split

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "instructkit",
        "serve",
        "--model",
        args.model,
        "--port",
        str(port),
        "--max-batch",
        str(args.max_batch),
        "--log-level",
        "warning",
    ]
    if args.tokenizer:
        command += ["--tokenizer", args.tokenizer]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    server = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("the server did not come up in 300 s")


async def ask(client: httpx.AsyncClient, messages: list[dict], max_tokens: int) -> dict:
    """One streaming chat request: its text, completion tokens and time to first token."""
    body = {"messages": messages, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    sent = time.perf_counter()
    first, pieces, tokens = None, [], 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: ") :])
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event["choices"]:
                piece = choice["delta"].get("content")
                if piece:
                    first = first or time.perf_counter()
                    pieces.append(piece)
    return {
        "text": "".join(pieces),
        "tokens": tokens,
        "ttft": (first or time.perf_counter()) - sent,
    }


async def one_round(url: str, conversations: list, max_tokens: int, concurrent: bool) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=3600) as client:
        start = time.perf_counter()
        if concurrent:
            replies = await asyncio.gather(*(ask(client, m, max_tokens) for m in conversations))
        else:
            replies = [await ask(client, m, max_tokens) for m in conversations]
        wall = time.perf_counter() - start
    ttfts = sorted(r["ttft"] for r in replies)
    tokens = sum(r["tokens"] for r in replies)
    return {"wall_s": round(wall, 2), "tokens": tokens, "tokens_per_s": round(tokens / wall, 2),
            "ttft_p50_s": round(statistics.median(ttfts), 3),
            "ttft_p95_s": round(ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))], 3),
            "texts": [r["text"] for r in replies]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="random:gpt2-small")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--tokenizer", help="passed to serve (offline: a gpt2 .tiktoken file)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    _, test, _ = load_book_split()
    conversations = [
        [{"role": "user", "content": r["instruction"]}]
        + ([{"role": "system", "content": r["input"]}] if r["input"] else [])
        for r in test[: args.requests]
    ]
    port = free_port()
    load_before = os.getloadavg()[0]
    server = start_server(args, port)
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(one_round(url, conversations[:1], args.max_tokens, False))  # warm-up
        alone = asyncio.run(one_round(url, conversations, args.max_tokens, False))
        together = asyncio.run(one_round(url, conversations, args.max_tokens, True))
    finally:
        server.terminate()
        server.wait(30)
    same = [a == b for a, b in zip(alone.pop("texts"), together.pop("texts"), strict=True)]
    result = {
        "model": args.model, "requests": args.requests, "max_tokens": args.max_tokens,
        "max_batch": args.max_batch, "threads": os.environ.get("OMP_NUM_THREADS", "torch default"),
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
        "one_at_a_time": alone, "concurrent": together,
        "ratio": round(together["tokens_per_s"] / alone["tokens_per_s"], 2),
        "greedy_equal": f"{sum(same)}/{len(same)}",
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
