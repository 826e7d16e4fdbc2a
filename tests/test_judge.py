"""The LLM judge against a fault-injecting fake server: wire format, retries, timeouts,
unparseable replies, concurrency, resume."""

import json
import time

import pytest
from fake_servers import FakeJudge

from instructkit.data import format_input
from instructkit.errors import UserError
from instructkit.evaluate import evaluate_responses
from instructkit.evaluate.judge import (
    JudgeClient,
    JudgeRejected,
    JudgeUnreachable,
    RetryPolicy,
    format_summary,
    judge_one,
    judge_prompt,
    parse_judge_spec,
    parse_score,
    summarize_scores,
)

FAST = RetryPolicy(retries=2, backoff=0.01, max_backoff=0.02)


def make_records(n: int) -> list[dict]:
    return [
        {
            "instruction": f"Task {i}.",
            "input": "x" if i % 2 else "",
            "output": f"Answer {i}.",
            "model_response": f"Reply {i}.",
        }
        for i in range(n)
    ]


def write_responses(tmp_path, n: int):
    path = tmp_path / "responses.json"
    path.write_text(json.dumps(make_records(n)))
    return path


def task_number(prompt: str) -> int:
    return int(prompt.split("Task ")[1].split(".")[0])


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("85", 85),
        (" 85\n", 85),
        ("Score: 85/100", 85),
        ("I would rate it 85.", 85),
        ("100", 100),
        ("0", 0),
        ("150 is too high; 90", 90),
        ("8.5", None),
        ("-3", None),
        ("great answer", None),
        ("", None),
        ("score85", None),
        ("**72**", 72),
    ],
)
def test_parse_score(reply, score):
    assert parse_score(reply) == score


def test_judge_prompt_is_the_books():
    record = {
        "instruction": "Rewrite.",
        "input": "The car is fast.",
        "output": "As fast as lightning.",
        "model_response": "As fast as a bullet.",
    }
    expected = (
        f"Given the input `{format_input(record)}` and correct output `As fast as lightning.`, "
        "score the model response `As fast as a bullet.` on a scale from 0 to 100, "
        "where 100 is the best score. Respond with the integer number only."
    )
    assert judge_prompt(record) == expected


def test_parse_judge_spec():
    assert parse_judge_spec("ollama:llama3") == ("ollama", "llama3")
    assert parse_judge_spec("ollama:llama3.1:8b") == ("ollama", "llama3.1:8b")
    assert parse_judge_spec("openai:gpt-4o-mini") == ("openai", "gpt-4o-mini")
    for bad in ("llama3", "vllm:x", "ollama:"):
        with pytest.raises(UserError):
            parse_judge_spec(bad)


def test_ollama_wire_format_and_streamed_reply():
    with (
        FakeJudge(lambda prompt, attempt: ("reply", "The score is 77")) as fake,
        JudgeClient("ollama", "llama3", fake.url, retry=FAST) as client,
    ):
        assert client.ask("hello") == "The score is 77"
    assert fake.payloads == [
        {
            "model": "llama3",
            "messages": [{"role": "user", "content": "hello"}],
            "options": {"seed": 123, "temperature": 0, "num_ctx": 2048},
        }
    ]


@pytest.mark.parametrize("suffix", ["", "/v1", "/v1/"])
def test_openai_wire_format_and_api_key(suffix):
    with (
        FakeJudge(lambda prompt, attempt: ("reply", "42")) as fake,
        JudgeClient("openai", "gpt-x", fake.url + suffix, api_key="sekret", retry=FAST) as client,
    ):
        assert client.endpoint == fake.url + "/v1/chat/completions"
        assert client.ask("hi") == "42"
    assert fake.payloads[0] == {
        "model": "gpt-x",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0,
        "seed": 123,
    }
    assert fake.headers[0]["Authorization"] == "Bearer sekret"


def test_500_then_success_is_retried(tmp_path):
    script = lambda prompt, attempt: (
        ("status", 500) if attempt == 1 else ("reply", str(10 * task_number(prompt)))
    )
    with FakeJudge(script) as fake, JudgeClient("ollama", "j", fake.url, retry=FAST) as client:
        doc = evaluate_responses(write_responses(tmp_path, 4), judge=client, progress=False)
    assert [r["judge_score"] for r in doc["records"]] == [0, 10, 20, 30]
    assert all(r["judge_error"] is None for r in doc["records"])
    assert sorted(fake.requests.values()) == [2, 2, 2, 2]
    assert doc["judge"]["n_scored"] == 4 and doc["judge"]["mean"] == 15


def test_a_hang_times_out_is_recorded_and_retried_on_the_next_run(tmp_path):
    responses = write_responses(tmp_path, 3)
    hang = {"on": True}

    def script(prompt, attempt):
        if task_number(prompt) == 1 and hang["on"]:
            return ("hang", 30)
        return ("reply", "50")

    with FakeJudge(script) as fake:
        retry = RetryPolicy(retries=1, backoff=0.01)
        with JudgeClient("ollama", "j", fake.url, timeout=0.3, retry=retry) as client:
            started = time.monotonic()
            doc = evaluate_responses(responses, judge=client, concurrency=3, progress=False)
            assert time.monotonic() - started < 5
        hung = doc["records"][1]
        assert hung["judge_score"] is None and hung["judge_reply"] is None
        assert "timed out after 0.3s (2 attempts)" in hung["judge_error"]
        assert doc["judge"]["n_errors"] == 1 and doc["judge"]["n_scored"] == 2
        assert fake.requests[judge_prompt(make_records(3)[1])] == 2

        hang["on"] = False
        with JudgeClient("ollama", "j", fake.url, retry=FAST) as client:
            doc = evaluate_responses(responses, judge=client, progress=False)
    assert [r["judge_score"] for r in doc["records"]] == [50, 50, 50]
    assert list(fake.answered.values()) == [1, 1, 1]  # nobody asked twice once answered


def test_non_numeric_reply_is_null_with_raw_kept_and_not_asked_again(tmp_path):
    responses = write_responses(tmp_path, 2)
    script = lambda prompt, attempt: (
        "reply",
        "A fine answer!" if task_number(prompt) == 0 else "88",
    )
    with FakeJudge(script) as fake:
        for _ in range(2):
            with JudgeClient("openai", "j", fake.url, retry=FAST) as client:
                doc = evaluate_responses(responses, judge=client, progress=False)
    first = doc["records"][0]
    assert (
        first["judge_score"] is None
        and first["judge_reply"] == "A fine answer!"
        and first["judge_error"] is None
    )
    assert doc["judge"]["n_unparsed"] == 1 and doc["judge"]["n_scored"] == 1
    assert list(fake.requests.values()) == [1, 1]


def test_4xx_is_recorded_without_retry_and_404_aborts(tmp_path):
    responses = write_responses(tmp_path, 2)
    with (
        FakeJudge(lambda prompt, attempt: ("status", 400)) as fake,
        JudgeClient("ollama", "j", fake.url, retry=FAST) as client,
        pytest.raises(JudgeRejected, match="refused all 2 requests .*HTTP 400"),
    ):
        evaluate_responses(responses, judge=client, progress=False)
    doc = json.loads((tmp_path / "scores.json").read_text())  # what was learnt is kept
    assert all("HTTP 400" in r["judge_error"] for r in doc["records"])
    assert doc["judge"]["n_refused"] == 2
    assert list(fake.requests.values()) == [1, 1]

    with (
        FakeJudge(lambda prompt, attempt: ("status", 404)) as fake,
        JudgeClient("ollama", "nope", fake.url, retry=FAST) as client,
        pytest.raises(JudgeRejected, match="404"),
    ):
        evaluate_responses(responses, out_path=tmp_path / "s404.json", judge=client, progress=False)


def test_dropped_connections_are_retried_then_recorded():
    with (
        FakeJudge(lambda prompt, attempt: ("drop",) if attempt < 3 else ("reply", "61")) as fake,
        JudgeClient("ollama", "j", fake.url, retry=FAST) as client,
    ):
        assert client.ask("p") == "61"
    with (
        FakeJudge(lambda prompt, attempt: ("drop",)) as fake,
        JudgeClient("ollama", "j", fake.url, retry=FAST) as client,
    ):
        judgement = judge_one(client, "p")
    assert judgement.score is None and "connection broken" in judgement.error
    assert fake.requests["p"] == 3


def test_unreachable_server_names_the_url(tmp_path):
    from fake_servers import free_socket

    sock = free_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()  # nothing listens there now
    with (
        JudgeClient("ollama", "j", url, retry=FAST) as client,
        pytest.raises(JudgeUnreachable, match=f"cannot reach the judge at {url}"),
    ):
        evaluate_responses(write_responses(tmp_path, 3), judge=client, progress=False)


def test_concurrency_sends_n_requests_at_once(tmp_path):
    responses = write_responses(tmp_path, 8)
    with (
        FakeJudge(lambda prompt, attempt: ("sleep", 0.25, "70")) as fake,
        JudgeClient("ollama", "j", fake.url, retry=FAST) as client,
    ):
        started = time.monotonic()
        doc = evaluate_responses(responses, judge=client, concurrency=4, progress=False)
        elapsed = time.monotonic() - started
    assert fake.max_in_flight == 4
    assert elapsed < 8 * 0.25  # sequential would take at least 2 s
    assert doc["judge"]["n_scored"] == 8


def test_summary_and_histogram():
    summary = summarize_scores([0, 9, 10, 55, 100, 100, None])
    assert summary["n"] == 7 and summary["n_scored"] == 6
    assert summary["mean"] == pytest.approx(274 / 6) and summary["median"] == 32.5
    assert summary["histogram"] == [2, 1, 0, 0, 0, 1, 0, 0, 0, 2]
    text = format_summary(summary, width=10)
    assert text.splitlines()[0] == "6 scored of 7, mean 45.67, median 32.5"
    assert "  0-9   | ########## 2" in text and " 90-100 | ########## 2" in text
    assert summarize_scores([None])["mean"] is None


def test_a_different_judge_does_not_reuse_scores(tmp_path):
    responses = write_responses(tmp_path, 2)
    with FakeJudge(lambda prompt, attempt: ("reply", "40")) as fake:
        with JudgeClient("ollama", "a", fake.url, retry=FAST) as client:
            evaluate_responses(responses, judge=client, progress=False)
        with JudgeClient("ollama", "b", fake.url, retry=FAST) as client:
            doc = evaluate_responses(responses, judge=client, progress=False)
        assert doc["judge"]["judge"] == "ollama:b"
        assert sum(fake.requests.values()) == 4
        # Metrics only: the judge results in the file are kept, not thrown away.
        kept = evaluate_responses(responses, progress=False)
    assert kept["judge"]["judge"] == "ollama:b" and kept["judge"]["n_scored"] == 2
