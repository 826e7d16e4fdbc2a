"""Servers for the evaluation and serving tests: a scriptable, fault-injecting fake judge
(Ollama and OpenAI chat endpoints on the standard library's HTTP server) and a helper that
runs an ASGI app with uvicorn on a free loopback port in a background thread."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

# An action for one request: ("reply", text) | ("status", code) | ("hang", seconds) | ("drop",)
Action = tuple


class FakeJudge:
    """Answers judge requests as `script(prompt, attempt)` says; counts what it saw.

    `attempt` is 1 for the first request with that prompt, 2 for the next, and so on.
    `answered[prompt]` counts successful replies, `requests[prompt]` every request.
    """

    def __init__(self, script: Callable[[str, int], Action]):
        self.script = script
        self.requests: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.payloads: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.release = threading.Event()  # set to end every hang at once
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Self:
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        judge = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # as real servers do; else delayed ACKs add ~40 ms

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self._send(200, b"fake judge is running", "text/plain")

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                with judge._lock:
                    judge.payloads.append(body)
                    judge.headers.append(dict(self.headers))
                    judge.requests[prompt] += 1
                    attempt = judge.requests[prompt]
                    judge.in_flight += 1
                    judge.max_in_flight = max(judge.max_in_flight, judge.in_flight)
                try:
                    action = judge.script(prompt, attempt)
                    self._act(action, prompt)
                finally:
                    with judge._lock:
                        judge.in_flight -= 1

            def _act(self, action: Action, prompt: str) -> None:
                kind = action[0]
                if kind == "hang":
                    judge.release.wait(action[1])
                    return self._send(503, b'{"error": "hung"}', "application/json")
                if kind == "sleep":
                    time.sleep(action[1])
                    action = ("reply", action[2])
                    kind = "reply"
                if kind == "status":
                    return self._send(
                        action[1],
                        json.dumps({"error": f"status {action[1]}"}).encode(),
                        "application/json",
                    )
                if kind == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return None
                text = action[1]
                if self.path == "/api/chat":
                    # Ollama streams NDJSON: the reply in two pieces, then a done object.
                    half = len(text) // 2
                    lines = [
                        {"message": {"role": "assistant", "content": piece}, "done": False}
                        for piece in (text[:half], text[half:])
                    ]
                    lines.append({"message": {"role": "assistant", "content": ""}, "done": True})
                    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
                    self._send(200, data, "application/x-ndjson")
                else:
                    reply = {
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]
                    }
                    self._send(200, json.dumps(reply).encode(), "application/json")
                with judge._lock:
                    judge.answered[prompt] += 1
                return None

            def _send(self, status: int, data: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """Run `app` with uvicorn on a free loopback port; yields its base URL."""
    import uvicorn

    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
