"""Benchmark: LLM-judge throughput with `--concurrency N` against one request at a time.

A local stand-in for an Ollama server answers /api/chat after a fixed latency (an LLM
spends most of a judge call generating, and Ollama serves parallel requests), streaming
the book-style integer reply as NDJSON. The same records are judged with concurrency 1
(the reference: the book's loop asks one record at a time) and with concurrency N, each
into a fresh scores file, so both runs include parsing, progress saving and the final
atomic write. It checks that both give the same scores, then prints records/s and the ratio.

    python bench/judge.py                       # 110 records (the book's test split size), 50 ms
    python bench/judge.py --records 40 --latency 0.2 --concurrency 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from instructkit.evaluate import evaluate_responses
from instructkit.evaluate.judge import JudgeClient

BOOK_RESPONSES = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "instruction-data-with-response.json"
)


def start_fake_ollama(latency: float) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # as real servers do; else delayed ACKs add ~40 ms

        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(latency)
            score = str(len(body["messages"][0]["content"]) % 101)
            lines = [{"message": {"role": "assistant", "content": score}, "done": False},
                     {"message": {"role": "assistant", "content": ""}, "done": True}]  # fmt: skip
            data = "".join(json.dumps(line) + "\n" for line in lines).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def records(n: int) -> list[dict]:
    if BOOK_RESPONSES.exists():
        book = json.loads(BOOK_RESPONSES.read_text())
        return [book[i % len(book)] | {"instruction": f"{book[i % len(book)]['instruction']} ({i})"}
                for i in range(n)]  # fmt: skip
    return [{"instruction": f"Task {i}.", "input": "", "output": f"Answer {i}.",
             "model_response": f"Reply {i}."} for i in range(n)]  # fmt: skip


def judge_once(url: str, responses: Path, out: Path, concurrency: int) -> tuple[float, list]:
    with JudgeClient("ollama", "bench", url) as client:
        start = time.perf_counter()
        doc = evaluate_responses(responses, out, client, concurrency=concurrency, progress=False)
        elapsed = time.perf_counter() - start
    return elapsed, [r["judge_score"] for r in doc["records"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=110)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per judge answer")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    server = start_fake_ollama(args.latency)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    with tempfile.TemporaryDirectory() as tmp:
        responses = Path(tmp) / "responses.json"
        responses.write_text(json.dumps(records(args.records)))
        judge_once(url, responses, Path(tmp) / "warmup.json", args.concurrency)  # imports, pools
        base, base_scores = judge_once(url, responses, Path(tmp) / "s1.json", 1)
        fast, fast_scores = judge_once(url, responses, Path(tmp) / "sn.json", args.concurrency)
    server.shutdown()
    assert base_scores == fast_scores and None not in base_scores, "the runs disagree"
    print(f"{args.records} records, {args.latency * 1000:.0f} ms per answer "
          f"({'book responses' if BOOK_RESPONSES.exists() else 'synthetic records'})")  # fmt: skip
    print(f"concurrency 1 (reference): {args.records / base:7.1f} records/s ({base:.2f} s)")
    print(
        f"concurrency {args.concurrency}:             {args.records / fast:7.1f} records/s ({fast:.2f} s)"
    )
    print(f"ratio: {base / fast:.2f}x (ideal {args.concurrency}x; "
          f"the floor is {args.records * args.latency:.2f} s sequential)")  # fmt: skip


if __name__ == "__main__":
    main()
