"""`data generate` and `data prefs` against the fake LLM server the judge tests use: the
book's recipes on the wire, deduplication, kill and resume (no record twice, none lost),
failures, and the CLI's exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from fake_servers import FakeJudge, free_socket

from instructkit.cli import main
from instructkit.data.dedup import normalize_text
from instructkit.data.synth import (
    USER_PREFIXES,
    extract_instruction,
    politeness_prompt,
    user_prefix,
)

LLAMA3 = USER_PREFIXES["llama3"]
SEED = [
    {"instruction": "Explain topic 1 in simple words.", "input": "", "output": "Topic 1 is..."},
    {"instruction": "Name three primary colors.", "input": "", "output": "Red, yellow, blue."},
]


def magpie(repeat_every: int = 4, answer_delay: float = 0.0):
    """Instruction requests get "Explain topic K ..." (every `repeat_every`-th a copy of an
    earlier or seed instruction); answer requests get an answer naming the instruction."""

    def script(prompt: str, attempt: int):
        if prompt == LLAMA3:
            if attempt % repeat_every == 0:
                return ("reply", f"explain TOPIC {attempt // repeat_every} in simple words!")
            return ("reply", f"Explain topic {attempt + 100} in simple words.\nThanks!")
        answer = f"An answer to: {prompt}"
        return ("sleep", answer_delay, answer) if answer_delay else ("reply", answer)

    return script


def generate_command(url: str, out, n: int, *extra: str) -> list[str]:
    return ["data", "generate", "--with", "ollama:llama3", "--url", url, "--n", str(n),
            "--out", str(out), "--quiet", *extra]  # fmt: skip


def test_user_prefix_and_extract_instruction():
    assert user_prefix("llama3") == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>"
    assert user_prefix("qwen2.5:7b") == "<|im_start|>user\n"
    assert user_prefix("anything", "phi3") == "<|user|>\n"
    assert extract_instruction("\n\nWhat do llamas eat?\nI wonder.") == "What do llamas eat?"
    assert extract_instruction("<|start_header_id|>user<|end_header_id|>\n\nHi there") == "Hi there"
    assert extract_instruction("  \n ") == ""


def test_generate_follows_the_books_recipe_and_drops_duplicates(tmp_path, capsys):
    seed_data = tmp_path / "seed.json"
    seed_data.write_text(json.dumps(SEED))
    out = tmp_path / "generated.json"
    with FakeJudge(magpie()) as fake:
        code = main(generate_command(fake.url, out, 6, "--seed-data", str(seed_data),
                                     "--concurrency", "3", "--seed", "7"))  # fmt: skip
    assert code == 0, capsys.readouterr()
    records = json.loads(out.read_text())
    assert len(records) == 6
    instructions = [normalize_text(r["instruction"]) for r in records]
    assert len(set(instructions)) == 6
    assert not set(instructions) & {normalize_text(r["instruction"]) for r in SEED}
    for record in records:
        assert (
            record["input"] == "" and record["output"] == f"An answer to: {record['instruction']}"
        )
    asks = [p for p in fake.payloads if p["messages"][0]["content"] == LLAMA3]
    answers = [p for p in fake.payloads if p["messages"][0]["content"] != LLAMA3]
    assert all(p["messages"][0]["role"] == "assistant" for p in asks)
    assert {p["options"]["temperature"] for p in asks} == {1.0}
    assert sorted(p["options"]["seed"] for p in asks) == list(range(7, 7 + len(asks)))
    assert all(p["messages"][0]["role"] == "user" and p["options"]["temperature"] == 0
               for p in answers)  # fmt: skip
    # duplicates are dropped before their answer is asked for
    assert len(answers) == 6 and len(asks) > 6
    printed = capsys.readouterr().out
    assert "6 new records" in printed and "duplicates" in printed
    assert not (tmp_path / "generated.json.partial").exists()


def test_generate_killed_mid_run_resumes_without_repeating_or_losing_records(tmp_path):
    out = tmp_path / "generated.jsonl"
    partial = tmp_path / "generated.jsonl.partial"
    with FakeJudge(magpie(answer_delay=0.4)) as fake:
        command = [sys.executable, "-m", "instructkit",
                   *generate_command(fake.url, out, 12, "--concurrency", "2")]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline, saved = time.monotonic() + 120, []
            while len(saved) < 3:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "generate never saved its progress"
                time.sleep(0.1)
                if partial.exists():
                    saved = json.loads(partial.read_text())["records"]
        finally:
            process.kill()
            process.wait()
        saved = json.loads(partial.read_text())["records"]
        assert 3 <= len(saved) < 12 and not out.exists()
        resumed = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert (
        f"{12 - len(saved)} new records" in resumed.stdout and "(12 of 12 in all)" in resumed.stdout
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 12
    assert records[: len(saved)] == saved  # none lost
    assert len({normalize_text(r["instruction"]) for r in records}) == 12  # none twice
    assert not partial.exists()


def test_generate_gives_up_after_max_attempts_and_keeps_progress(tmp_path, capsys):
    out = tmp_path / "g.json"
    with FakeJudge(lambda prompt, attempt: ("reply", "Same question every time?")) as fake:
        code = main(generate_command(fake.url, out, 3, "--max-attempts", "5"))
    assert code == 1
    printed = capsys.readouterr().out
    assert (
        "1 new records in 5 attempts this run (1 of 3 in all)" in printed
        and "4 duplicates" in printed
    )
    assert not out.exists()
    assert len(json.loads((tmp_path / "g.json.partial").read_text())["records"]) == 1


def polite_script(prompt: str, attempt: int):
    output = prompt.split("and correct output `", 1)[1].split("`, slightly rewrite", 1)[0]
    if "to be more polite." in prompt:
        return ("reply", f"`Kindly note: {output}`")
    return ("reply", f"Ugh. {output}")


def write_data(tmp_path, n: int = 4):
    records = [
        {
            "instruction": f"Task {i}.",
            "input": "x" if i % 2 else "",
            "output": f"Answer {i}.",
            "id": i,
        }
        for i in range(n)
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path, records


def prefs_command(url: str, data, out, *extra: str) -> list[str]:
    return ["data", "prefs", "--with", "openai:gpt", "--url", url, "--data", str(data),
            "--out", str(out), "--quiet", *extra]  # fmt: skip


def test_prefs_polite_is_chosen_impolite_rejected_keys_kept(tmp_path, capsys):
    data, records = write_data(tmp_path)
    out = tmp_path / "prefs.json"
    with FakeJudge(polite_script) as fake:
        assert main(prefs_command(fake.url, data, out, "--concurrency", "2")) == 0
    pairs = json.loads(out.read_text())
    assert [{k: r[k] for k in ("instruction", "input", "output", "id")} for r in pairs] == records
    for pair, record in zip(pairs, records, strict=True):
        assert pair["chosen"] == f"Kindly note: {record['output']}"  # backticks stripped
        assert pair["rejected"] == f"Ugh. {record['output']}"
    asked = {p["messages"][0]["content"] for p in fake.payloads}
    assert asked == {politeness_prompt(r, k) for r in records for k in ("polite", "impolite")}
    assert len(fake.payloads) == 8 and all(p["temperature"] == 0 for p in fake.payloads)


def test_prefs_book_recipe_pairs_one_rewrite_with_the_original(tmp_path):
    data, records = write_data(tmp_path, 12)
    out = tmp_path / "prefs.jsonl"
    with FakeJudge(polite_script) as fake:
        assert main(prefs_command(fake.url, data, out, "--recipe", "book", "--seed", "1")) == 0
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    kinds = set()
    for pair, record in zip(pairs, records, strict=True):
        if pair["rejected"] == record["output"]:
            assert pair["chosen"] == f"Kindly note: {record['output']}"
            kinds.add("polite")
        else:
            assert pair == {**record, "chosen": record["output"],
                            "rejected": f"Ugh. {record['output']}"}  # fmt: skip
            kinds.add("impolite")
    assert kinds == {"polite", "impolite"} and len(fake.payloads) == 12


def test_prefs_failure_exits_1_and_the_rerun_asks_only_what_failed(tmp_path, capsys):
    data, records = write_data(tmp_path)
    out = tmp_path / "prefs.json"
    broken = politeness_prompt(records[2], "impolite")
    fail = {"on": True}

    def script(prompt, attempt):
        if prompt == broken and fail["on"]:
            return ("status", 400)
        return polite_script(prompt, attempt)

    with FakeJudge(script) as fake:
        assert main(prefs_command(fake.url, data, out)) == 1
        assert "1 records failed (first: HTTP 400" in capsys.readouterr().out
        assert not out.exists()
        fail["on"] = False
        assert main(prefs_command(fake.url, data, out)) == 0
    assert len(json.loads(out.read_text())) == 4
    answered_twice = [p for p, count in fake.answered.items() if count > 1]
    assert answered_twice == [politeness_prompt(records[2], "polite")]  # its pair is redone


def test_prefs_killed_mid_run_resumes(tmp_path):
    data, records = write_data(tmp_path, 6)
    out = tmp_path / "prefs.json"
    partial = tmp_path / "prefs.json.partial"
    hung = politeness_prompt(records[4], "polite")
    hang = {"on": True}

    def script(prompt, attempt):
        if prompt == hung and hang["on"]:
            return ("hang", 120)
        return polite_script(prompt, attempt)

    with FakeJudge(script) as fake:
        command = [sys.executable, "-m", "instructkit", *prefs_command(fake.url, data, out)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 90
            while fake.requests[hung] == 0 or not partial.exists():
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "prefs never reached the hung record"
                time.sleep(0.1)
            time.sleep(1.5)  # a flush after the last finished record
            saved = json.loads(partial.read_text())["pairs"]
        finally:
            process.kill()
            process.wait()
        assert len(saved) == 4
        hang["on"] = False
        resumed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert len(json.loads(out.read_text())) == 6
    for record in records:
        for politeness in ("polite", "impolite"):
            assert fake.answered[politeness_prompt(record, politeness)] == 1  # none asked twice


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--with", "llama3"], "--with 'llama3' is not BACKEND:MODEL"),
        (["--n", "0"], "--n must be at least 1"),
        (["--retries", "-1"], "--retries must be 0 or more"),
        (["--template", "nope"], "--template 'nope' is unknown"),
    ],
)
def test_generate_usage_errors_exit_2(tmp_path, capsys, argv, message):
    base = {"--with": "ollama:llama3", "--n": "2", "--url": "http://127.0.0.1:9"}
    base.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    args = ["data", "generate", "--out", str(tmp_path / "o.json"), "--quiet"]
    for key, value in base.items():
        args += [key, value]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_unreachable_server_and_existing_output_exit_2(tmp_path, capsys):
    sock = free_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    assert main(generate_command(url, tmp_path / "o.json", 2, "--retries", "0")) == 2
    assert f"cannot reach the judge at {url}" in capsys.readouterr().err
    data, _ = write_data(tmp_path)
    existing = tmp_path / "exists.json"
    existing.write_text("[]")
    assert main(prefs_command(url, data, existing)) == 2
    assert "exists; choose another --out" in capsys.readouterr().err
    assert main(prefs_command(url, data, data)) == 2
    assert "is the input file" in capsys.readouterr().err
    assert json.loads(data.read_text())[0]["output"] == "Answer 0."
