"""`instructkit evaluate` end to end: metrics, the book's responses file, an unreachable
judge, and an evaluation killed mid-run and resumed."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_servers import FakeJudge, free_socket
from shared_data import SHARED_DATA

from instructkit.cli import main
from instructkit.evaluate.judge import judge_prompt

BOOK_RESPONSES = SHARED_DATA / "instruction-data-with-response.json"


def write_records(path: Path, n: int) -> list[dict]:
    records = [
        {
            "instruction": f"Task {i}.",
            "input": "",
            "output": f"Answer {i}.",
            "model_response": f"Answer {i}." if i % 2 == 0 else "Something else.",
            "family": "even" if i % 2 == 0 else "odd",
        }
        for i in range(n)
    ]
    path.write_text(json.dumps(records))
    return records


def test_metrics_only(tmp_path, capsys):
    responses = tmp_path / "responses.json"
    write_records(responses, 6)
    assert main(["evaluate", "--responses", str(responses), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "metrics over 6 responses: exact match 50.0%" in out
    assert "even" in out and "odd" in out
    doc = json.loads((tmp_path / "scores.json").read_text())
    assert doc["metrics"]["groups"]["even"]["exact_match"] == 1.0
    assert doc["metrics"]["groups"]["odd"]["exact_match"] == 0.0
    assert doc["judge"] is None
    assert [r["exact_match"] for r in doc["records"]] == [True, False] * 3


def test_missing_responses_are_one_line_each(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}] * 2))
    assert main(["evaluate", "--responses", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("model_response" in line and str(path) in line for line in err)


def test_unreachable_judge_is_one_line_naming_the_url_exit_2(tmp_path, capsys):
    responses = tmp_path / "responses.json"
    write_records(responses, 2)
    sock = free_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    code = main(
        [
            "evaluate",
            "--responses",
            str(responses),
            "--judge",
            "ollama:llama3",
            "--url",
            url,
            "--retries",
            "0",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"error: cannot reach the judge at {url}")


def test_judge_through_the_cli(tmp_path, capsys):
    responses = tmp_path / "responses.json"
    write_records(responses, 4)
    with FakeJudge(lambda prompt, attempt: ("reply", "Score: 80")) as fake:
        code = main(
            [
                "evaluate",
                "--responses",
                str(responses),
                "--judge",
                "openai:judge",
                "--url",
                fake.url,
                "--concurrency",
                "2",
                "--quiet",
                "--out",
                str(tmp_path / "s.json"),
            ]
        )
    out = capsys.readouterr().out
    assert code == 0
    assert "judge openai:judge: 4 scored of 4, mean 80.00, median 80" in out
    assert " 80-89  | " in out and "even: 2 scored of 2" in out


def test_killed_mid_run_resumes_without_rescoring_or_losing_records(tmp_path):
    responses = tmp_path / "responses.json"
    records = write_records(responses, 8)
    scores = tmp_path / "scores.json"
    hung = judge_prompt(records[3])
    hang = {"on": True}

    def script(prompt, attempt):
        if prompt == hung and hang["on"]:
            return ("hang", 120)
        return (
            "reply",
            str(10 + records.index(next(r for r in records if judge_prompt(r) == prompt))),
        )

    with FakeJudge(script) as fake:
        command = [
            sys.executable,
            "-m",
            "instructkit",
            "evaluate",
            "--responses",
            str(responses),
            "--judge",
            "ollama:judge",
            "--url",
            fake.url,
            "--concurrency",
            "2",
            "--timeout",
            "120",
            "--quiet",
        ]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 90
            saved = 0
            while saved < 7:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the evaluation never saved its progress"
                time.sleep(0.1)
                if scores.exists():
                    doc = json.loads(scores.read_text())
                    saved = sum(r["judge_reply"] is not None for r in doc["records"])
            assert fake.requests[hung] == 1 and fake.answered[hung] == 0  # still waiting on it
        finally:
            process.kill()
            process.wait()

        hang["on"] = False
        resumed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert "8 scored of 8" in resumed.stdout
    doc = json.loads(scores.read_text())
    assert [r["judge_score"] for r in doc["records"]] == [10 + i for i in range(8)]
    assert all(fake.answered[judge_prompt(r)] == 1 for r in records)  # none scored twice
    assert fake.requests[hung] == 2 and sum(fake.requests.values()) == 9


def test_ctrl_c_saves_progress_and_exits_at_once(tmp_path):
    responses = tmp_path / "responses.json"
    records = write_records(responses, 3)
    hung = judge_prompt(records[1])
    with FakeJudge(
        lambda prompt, attempt: ("hang", 120) if prompt == hung else ("reply", "33")
    ) as fake:
        command = [sys.executable, "-m", "instructkit", "evaluate", "--responses", str(responses),
                   "--judge", "ollama:judge", "--url", fake.url, "--quiet"]  # fmt: skip
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 90
        while fake.requests[hung] == 0:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        _, err = process.communicate(timeout=30)
    assert process.returncode == 130 and "interrupted" in err
    assert time.monotonic() - started < 5  # did not wait for the hung request
    doc = json.loads((tmp_path / "scores.json").read_text())
    assert [r["judge_score"] for r in doc["records"]] == [33, None, None]


@pytest.mark.skipif(
    not BOOK_RESPONSES.exists(), reason="the book's responses file is not in ../shared/data"
)
def test_metrics_over_the_books_gpt2_medium_responses(tmp_path, capsys):
    out_path = tmp_path / "book-scores.json"
    assert (
        main(["evaluate", "--responses", str(BOOK_RESPONSES), "--out", str(out_path), "--quiet"])
        == 0
    )
    out = capsys.readouterr().out
    with capsys.disabled():
        print("\n" + out)
    doc = json.loads(out_path.read_text())
    assert doc["metrics"]["n"] == 110
    assert 0.0 < doc["metrics"]["exact_match"] < 1.0
    assert 0.0 < doc["metrics"]["rouge_l"] < 1.0
    # The first record: "The car is as fast as a bullet." against "... as lightning."
    assert doc["records"][0]["exact_match"] is False
    assert doc["records"][0]["rouge_l"] == pytest.approx(2 * (6 / 8) * (6 / 7) / (6 / 8 + 6 / 7))


def test_api_key_env_names_the_variable_whose_key_is_sent(tmp_path, capsys, monkeypatch):
    responses = tmp_path / "responses.json"
    write_records(responses, 2)
    monkeypatch.setenv("MY_JUDGE_KEY", "k-123")
    monkeypatch.setenv("OPENAI_API_KEY", "the-default-variable")
    command = ["evaluate", "--responses", str(responses), "--judge", "openai:judge", "--quiet"]
    with FakeJudge(lambda prompt, attempt: ("reply", "Score: 80")) as fake:
        flags = ["--url", fake.url, "--api-key-env", "MY_JUDGE_KEY", "--out", str(tmp_path / "a")]
        assert main([*command, *flags]) == 0
    assert [h.get("Authorization") for h in fake.headers] == ["Bearer k-123"] * 2

    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with FakeJudge(lambda prompt, attempt: ("reply", "Score: 80")) as fake:
        flags = ["--url", fake.url, "--api-key-env", "NO_SUCH_KEY", "--out", str(tmp_path / "b")]
        assert main([*command, *flags]) == 0
    assert len(fake.headers) == 2 and all("Authorization" not in h for h in fake.headers)


def evaluate_with(fake: FakeJudge, responses: Path) -> int:
    return main(["evaluate", "--responses", str(responses), "--judge", "ollama:j",
                 "--url", fake.url, "--retries", "0", "--quiet"])  # fmt: skip


def test_a_judge_that_refuses_every_request_fails_with_the_reason(tmp_path, capsys):
    responses = tmp_path / "responses.json"
    write_records(responses, 3)
    with FakeJudge(lambda prompt, attempt: ("status", 400)) as fake:
        assert evaluate_with(fake, responses) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: the judge at {fake.url} refused all 3 requests")
    assert "HTTP 400" in line and "asking again fails the same way" in line
    assert "run again" not in line


def test_some_refused_requests_are_reported_without_run_again(tmp_path, capsys):
    responses = tmp_path / "responses.json"
    records = write_records(responses, 3)
    refused = judge_prompt(records[0])
    script = lambda prompt, attempt: ("status", 400) if prompt == refused else ("reply", "70")
    with FakeJudge(script) as fake:
        assert evaluate_with(fake, responses) == 0
    out = capsys.readouterr().out
    assert "2 scored of 3" in out
    assert "1 request failed (first: HTTP 400" in out
    assert "the judge refused them: asking again fails the same way" in out
