"""LLM-as-judge over the Ollama and OpenAI-compatible HTTP APIs, as in section 7.8 of the book.

Each record's formatted input, reference output and model response go into the book's
prompt; the judge answers with an integer from 0 to 100. Ollama gets the book's
deterministic options (seed 123, temperature 0, num_ctx 2048) and streams its reply as
newline-delimited JSON; OpenAI-compatible servers get temperature 0 and seed 123.

Failures are sorted by what can fix them:
- connection errors, timeouts, 5xx and 429 are retried with bounded exponential backoff;
- a server still unreachable after the retries aborts the run (`JudgeUnreachable`,
  naming the URL), as does 401/403/404 (`JudgeRejected`: wrong key or model name),
  since every other record would fail the same way;
- a timeout or 5xx that outlasts the retries, another 4xx, or a malformed answer is
  recorded for that record (`error`), and that record is asked again on the next run;
  a 4xx is also marked `refused` (the same request fails the same way), and when the
  judge refused every request, `evaluate_responses` fails with the reason;
- a reply without a score in range is kept (`reply`) with `score` null: the judge did
  answer, so the record counts as finished.
Records are judged by `concurrency` worker threads sharing one `httpx.Client`; results
come back to the caller's thread, which saves them (`run_concurrently`, which data
generation (`instructkit.data.synth`) shares with the judge).
"""

from __future__ import annotations

import json
import queue
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Self, TypeVar

import httpx

from instructkit.errors import UserError

BACKENDS = ("ollama", "openai")
DEFAULT_URLS = {"ollama": "http://localhost:11434", "openai": "https://api.openai.com"}
OLLAMA_OPTIONS = {"seed": 123, "temperature": 0, "num_ctx": 2048}
HISTOGRAM_BINS = 10
K = TypeVar("K")
T = TypeVar("T")
R = TypeVar("R")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w])")


class JudgeUnreachable(UserError):
    """The judge server could not be reached even after retrying."""


class JudgeRejected(UserError):
    """The judge server refused the requests (authentication or unknown model)."""


class JudgeRequestError(Exception):
    """One request failed in a way that is recorded for its record and retried next run;
    `refused`: the judge answered a 4xx, so the same request would fail the same way."""

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.refused = refused


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff: `retries` extra attempts, waiting backoff * 2**k, at most max_backoff."""

    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0

    def delay(self, attempt: int) -> float:
        return min(self.max_backoff, self.backoff * 2**attempt)


@dataclass
class Judgement:
    """The outcome for one record: a score, the raw reply, or the error that prevented one."""

    score: int | None
    reply: str | None
    error: str | None
    refused: bool = False  # a 4xx: asking the same again fails the same way

    @property
    def finished(self) -> bool:
        """The judge answered (even without a usable score), so asking again would not help."""
        return self.reply is not None


def judge_prompt(record: dict, response_key: str = "model_response") -> str:
    """The book's judge prompt for one record."""
    from instructkit.data import format_input

    return (
        f"Given the input `{format_input(record)}` "
        f"and correct output `{record['output']}`, "
        f"score the model response `{record[response_key]}`"
        f" on a scale from 0 to 100, where 100 is the best score. "
        f"Respond with the integer number only."
    )


def parse_score(reply: str) -> int | None:
    """The first number in the reply that is an integer from 0 to 100, or None.

    "85", "Score: 85/100" and "I would rate it 85." all give 85; "8.5", "-3" and "150"
    are skipped, so "I'd say 150... no, 90" gives 90.
    """
    for match in _NUMBER.finditer(reply):
        token = match.group()
        if "." in token or token.startswith("-"):
            continue
        value = int(token)
        if 0 <= value <= 100:
            return value
    return None


def parse_judge_spec(spec: str, flag: str = "--judge") -> tuple[str, str]:
    """ "ollama:llama3" -> ("ollama", "llama3"); the model name may itself contain colons."""
    backend, sep, model = spec.partition(":")
    if not sep or backend not in BACKENDS or not model:
        raise UserError(
            f"{flag} {spec!r} is not BACKEND:MODEL with BACKEND one of {', '.join(BACKENDS)} "
            "(for example ollama:llama3 or openai:gpt-4o-mini)"
        )
    return backend, model


class JudgeClient:
    """Asks one judge model for scores over HTTP, with retries; safe to share between threads."""

    def __init__(
        self,
        backend: str,
        model: str,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        retry: RetryPolicy = RetryPolicy(),
    ):
        if backend not in BACKENDS:
            raise UserError(f"unknown judge backend {backend!r}; use one of {', '.join(BACKENDS)}")
        if timeout <= 0:
            raise UserError(f"--timeout must be positive, got {timeout}")
        self.backend = backend
        self.model = model
        self.url = (url or DEFAULT_URLS[backend]).rstrip("/")
        self.timeout = timeout
        self.retry = retry
        self.stop = threading.Event()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout, headers=headers)

    @property
    def spec(self) -> str:
        return f"{self.backend}:{self.model}"

    @property
    def endpoint(self) -> str:
        if self.backend == "ollama":
            return f"{self.url}/api/chat"
        base = self.url if self.url.endswith("/v1") else f"{self.url}/v1"
        return f"{base}/chat/completions"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ask(self, prompt: str, *, role: str = "user", options: dict | None = None) -> str:
        """The judge's reply text, retrying transient failures.

        `role` is the message's role (data generation sends an "assistant" turn for the
        model to continue); `options` (temperature, seed, top_p) override the judge's
        deterministic sampling. Raises JudgeUnreachable, JudgeRejected (abort the run)
        or JudgeRequestError (record it).
        """
        attempts = self.retry.retries + 1
        for attempt in range(attempts):
            if self.stop.is_set():
                raise JudgeRequestError("cancelled")
            try:
                return self._ask_once(prompt, role, options or {})
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                failure: Exception = JudgeUnreachable(
                    f"cannot reach the judge at {self.url} ({type(error).__name__}: {error}); "
                    "is the server running? (--url sets its address)"
                )
            except httpx.TimeoutException:
                failure = JudgeRequestError(
                    f"timed out after {self.timeout:g}s ({attempts} attempts) at {self.endpoint}"
                )
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as error:
                failure = JudgeRequestError(f"connection broken: {type(error).__name__}: {error}")
            except _Retryable as error:
                failure = JudgeRequestError(str(error))
            if attempt + 1 < attempts and not self.stop.wait(self.retry.delay(attempt)):
                continue
            raise failure
        raise AssertionError("unreachable")

    def _ask_once(self, prompt: str, role: str, options: dict) -> str:
        messages = [{"role": role, "content": prompt}]
        if self.backend == "ollama":
            payload = {
                "model": self.model,
                "messages": messages,
                "options": {**OLLAMA_OPTIONS, **options},
            }
        else:
            payload = {
                "model": self.model,
                "messages": messages,
                "temperature": 0,
                "seed": 123,
                **options,
            }
        deadline = time.monotonic() + self.timeout
        with self._client.stream("POST", self.endpoint, json=payload) as response:
            if response.status_code >= 400:
                self._raise_for_status(response)
            if self.backend == "ollama":
                return _read_ollama_stream(response, deadline)
            response.read()
            return _read_openai_reply(response)

    def _raise_for_status(self, response: httpx.Response) -> None:
        body = response.read().decode("utf-8", "replace").strip()[:300]
        status = f"HTTP {response.status_code} {response.reason_phrase}".strip()
        message = f"{status} from {self.endpoint}: {body}"
        if response.status_code >= 500 or response.status_code == 429:
            raise _Retryable(message)
        if response.status_code in (401, 403, 404):
            raise JudgeRejected(f"the judge at {self.url} refused {self.spec}: {message}")
        raise JudgeRequestError(message, refused=True)


class _Retryable(Exception):
    """A 5xx or 429 answer: worth asking again after a pause."""


def _read_ollama_stream(response: httpx.Response, deadline: float) -> str:
    """Concatenate message.content over Ollama's NDJSON stream (one object when not streaming)."""
    pieces = []
    for line in response.iter_lines():
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("the reply took longer than the timeout")
        if not line.strip():
            continue
        try:
            part = json.loads(line)
        except json.JSONDecodeError:
            raise JudgeRequestError(
                f"the judge sent a line that is not JSON: {line[:120]!r}"
            ) from None
        if not isinstance(part, dict):
            raise JudgeRequestError(f"the judge sent {line[:120]!r}, not a JSON object")
        if part.get("error"):
            raise JudgeRequestError(f"the judge answered with an error: {part['error']}")
        message = part.get("message") or {}
        pieces.append(str(message.get("content") or ""))
        if part.get("done"):
            break
    return "".join(pieces)


def _read_openai_reply(response: httpx.Response) -> str:
    try:
        return str(response.json()["choices"][0]["message"]["content"] or "")
    except (ValueError, KeyError, IndexError, TypeError):
        raise JudgeRequestError(
            f"the judge's answer is not a chat completion: {response.text[:200]!r}"
        ) from None


def judge_one(client: JudgeClient, prompt: str) -> Judgement:
    try:
        reply = client.ask(prompt)
    except JudgeRequestError as error:
        return Judgement(score=None, reply=None, error=str(error), refused=error.refused)
    return Judgement(score=parse_score(reply), reply=reply, error=None)


def judge_all(
    client: JudgeClient,
    prompts: dict[int, str],
    on_result: Callable[[int, Judgement], None],
    on_flush: Callable[[], None],
    concurrency: int = 1,
    flush_interval: float = 1.0,
    progress: bool = True,
) -> None:
    """Judge every prompt (keyed by record index), `concurrency` at a time (see run_concurrently)."""
    run_concurrently(
        client,
        prompts,
        lambda prompt: judge_one(client, prompt),
        on_result,
        on_flush,
        concurrency=concurrency,
        flush_interval=flush_interval,
        progress=progress,
        desc=f"judging with {client.spec}",
    )


def run_concurrently(
    client: JudgeClient,
    tasks: Mapping[K, T],
    work: Callable[[T], R],
    on_result: Callable[[K, R], None],
    on_flush: Callable[[], None],
    *,
    concurrency: int = 1,
    flush_interval: float = 1.0,
    progress: bool = True,
    desc: str = "asking",
) -> None:
    """Run `work(task)` for every task, `concurrency` at a time, on daemon worker threads.

    `work` talks to `client` and returns a result for its task (a failure the caller
    records is a result too); an exception it raises (JudgeUnreachable, JudgeRejected)
    stops the run and is raised here. `on_result` runs in the calling thread as each
    result arrives; `on_flush` runs at most every `flush_interval` seconds while results
    are waiting to be saved, and once at the end, also when the run is aborted or
    interrupted, so finished work is never lost. The workers are daemon threads, so
    Ctrl-C does not wait for requests still in flight.
    """
    from tqdm import tqdm

    if concurrency < 1:
        raise UserError(f"--concurrency must be at least 1, got {concurrency}")
    client.stop.clear()  # a client serves one run after another
    pending: queue.SimpleQueue[tuple[K, T]] = queue.SimpleQueue()
    for item in tasks.items():
        pending.put(item)
    results: queue.SimpleQueue[tuple[K, R | None, Exception | None]] = queue.SimpleQueue()

    def worker() -> None:
        while not client.stop.is_set():
            try:
                key, task = pending.get_nowait()
            except queue.Empty:
                return
            try:
                results.put((key, work(task), None))
            except Exception as error:  # noqa: BLE001 (re-raised in the caller's thread)
                results.put((key, None, error))
                return

    for k in range(min(concurrency, len(tasks))):
        threading.Thread(target=worker, name=f"llm-{k}", daemon=True).start()
    bar = tqdm(total=len(tasks), desc=desc, unit="record", disable=not progress)
    remaining, dirty, last_flush = len(tasks), False, time.monotonic()
    try:
        while remaining:
            try:
                key, result, error = results.get(timeout=0.2)
            except queue.Empty:
                pass
            else:
                if error is not None:
                    raise error
                on_result(key, result)
                remaining -= 1
                dirty = True
                bar.update(1)
            if dirty and time.monotonic() - last_flush >= flush_interval:
                on_flush()
                dirty, last_flush = False, time.monotonic()
    finally:
        client.stop.set()
        bar.close()
        on_flush()


def summarize_scores(scores: Iterable[int | None]) -> dict:
    """n, how many were scored, their mean and median, and counts in ten bins (90-100 holds 100)."""
    scores = list(scores)
    valid = [s for s in scores if s is not None]
    histogram = [0] * HISTOGRAM_BINS
    for score in valid:
        histogram[min(score // 10, HISTOGRAM_BINS - 1)] += 1
    return {
        "n": len(scores),
        "n_scored": len(valid),
        "mean": statistics.fmean(valid) if valid else None,
        "median": statistics.median(valid) if valid else None,
        "histogram": histogram,
    }


def format_summary(summary: dict, width: int = 40) -> str:
    """n scored of n, mean, median, and a text histogram with one row per ten points."""
    head = f"{summary['n_scored']} scored of {summary['n']}"
    if summary["n_scored"]:
        head += f", mean {summary['mean']:.2f}, median {summary['median']:g}"
    lines = [head]
    peak = max(summary["histogram"]) if summary["n_scored"] else 0
    for k, count in enumerate(summary["histogram"]):
        low, high = 10 * k, 100 if k == HISTOGRAM_BINS - 1 else 10 * k + 9
        bar = "#" * round(width * count / peak) if peak else ""
        lines.append(f"  {low:>3}-{high:<3} | {bar:<{width}} {count}")
    return "\n".join(lines)
