"""The server against the official `openai` and `ollama` clients, on a tiny random model:
well-formed replies streaming and not, 4xx errors for bad requests, concurrent requests,
the API key, and `instructkit evaluate` using the server as its judge."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import ollama
import openai
import pytest
import torch
from fake_servers import free_socket, serve_in_thread

from instructkit.cli import main
from instructkit.config import GenerationConfig
from instructkit.data import get_style
from instructkit.evaluate.judge import judge_prompt
from instructkit.model import GPTConfig, GPTModel
from instructkit.model.checkpoints import save_pretrained
from instructkit.serve import Engine, SamplingParams, messages_to_record
from instructkit.serve.app import create_app
from instructkit.tokenizer import train_tokenizer

CONTEXT = 384
RECORD = {
    "instruction": "Rewrite the sentence using a simile.",
    "input": "The car is very fast.",
    "output": "The car is as fast as lightning.",
    "model_response": "The car is fast like a bullet.",
}
QUESTION = [{"role": "user", "content": "Name a color."}]
ANSWER = "Blue, like the clear sky in summer."


@pytest.fixture(scope="module")
def engine():
    """A tiny model taught (in a second of training) to answer QUESTION with ANSWER, then stop."""
    style = get_style("alpaca")
    taught = {**messages_to_record(QUESTION), "output": ANSWER}
    tokenizer = train_tokenizer(
        [style.text(taught), style.text(RECORD), judge_prompt(RECORD)] * 20, vocab_size=400
    )
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, context_length=CONTEXT, emb_dim=32, n_heads=2, n_layers=2
    )
    model = GPTModel(config)
    ids = torch.tensor([tokenizer.encode(style.text(taught)) + [tokenizer.eos_id]])  # (1, T)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains far faster on one thread
    try:
        for _ in range(60):
            loss = model.loss(ids[:, :-1], ids[:, 1:])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return Engine(model.eval(), tokenizer, style, "tiny-test", max_new_tokens=40)


@pytest.fixture(scope="module")
def url(engine):
    with serve_in_thread(create_app(engine)) as base:
        yield base


@pytest.fixture(scope="module")
def expected(engine):
    """The greedy reply to QUESTION straight from the engine (no HTTP): the taught answer."""
    gen = engine.chat(QUESTION, SamplingParams())
    pieces = list(gen)
    assert "".join(pieces) == gen.text == ANSWER and len(pieces) > 5
    assert gen.finish_reason == "stop" and 5 < gen.completion_tokens < 40
    return gen


@pytest.fixture
def oai(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_messages_to_record():
    messages = [
        {"role": "system", "content": "The car is fast."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Make a simile."},
    ]
    assert messages_to_record(messages) == {
        "instruction": "Make a simile.",
        "input": "The car is fast.",
    }


def test_health_models_and_tags(url):
    assert httpx.get(f"{url}/health").json() == {"status": "ok", "model": "tiny-test"}
    models = openai.OpenAI(base_url=f"{url}/v1", api_key="x").models.list()
    assert [m.id for m in models.data] == ["tiny-test"]
    listed = ollama.Client(host=url).list()
    assert [m.model for m in listed.models] == ["tiny-test"]
    assert listed.models[0].details.family == "gpt2"


def test_openai_chat_plain_and_stream(oai, expected, engine):
    reply = oai.chat.completions.create(model="anything-at-all", messages=QUESTION)
    assert reply.model == "tiny-test"
    assert reply.choices[0].message.content == ANSWER
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "stop"
    prompt_tokens = len(engine.tokenizer.encode(engine.style.prompt(messages_to_record(QUESTION))))
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (
        prompt_tokens,
        expected.completion_tokens,
    )

    chunks = list(
        oai.chat.completions.create(
            model="x", messages=QUESTION, stream=True, stream_options={"include_usage": True}
        )
    )
    deltas = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert "".join(deltas) == ANSWER and len(deltas) > 5
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == expected.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_max_tokens_cuts_the_reply(oai, engine):
    short = engine.chat(QUESTION, SamplingParams(max_tokens=3)).run()
    assert ANSWER.startswith(short) and 0 < len(short) < len(ANSWER)
    reply = oai.chat.completions.create(model="x", messages=QUESTION, max_tokens=3)
    assert reply.choices[0].message.content == short
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3


def test_server_defaults_fill_what_a_request_leaves_out(engine):
    """`serve --max-new-tokens 3 --temperature ...` become the defaults; a request's own win."""
    from instructkit.serve import ollama as ollama_routes
    from instructkit.serve import openai as openai_routes

    short = Engine(
        engine.model, engine.tokenizer, engine.style, "x", GenerationConfig(max_new_tokens=3)
    )
    assert short.chat(QUESTION, SamplingParams()).run() == (
        engine.chat(QUESTION, SamplingParams(max_tokens=3)).run()
    )
    defaults = GenerationConfig(temperature=0.7, top_k=5, seed=1)
    sampled = Engine(engine.model, engine.tokenizer, engine.style, "x", defaults)
    config = openai_routes.sampling({"temperature": 0}, sampled).config
    assert (config.temperature, config.top_k, config.seed) == (0.0, 5, 1)
    config = ollama_routes.sampling({"options": {"top_k": 0, "seed": 3}}, sampled).config
    assert (config.temperature, config.top_k, config.seed) == (0.7, None, 3)
    assert config.eos_id == engine.tokenizer.eos_id


def test_sse_wire_format(url):
    with httpx.stream(
        "POST",
        f"{url}/v1/chat/completions",
        json={"messages": QUESTION, "max_tokens": 3, "stream": True},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    events = body.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])


def test_openai_completions_raw_text(oai, engine):
    prompt = "The car is"
    direct = engine.complete(prompt, SamplingParams(max_tokens=5)).run()
    reply = oai.completions.create(model="x", prompt=prompt, max_tokens=5)
    assert reply.choices[0].text == direct and reply.object == "text_completion"
    streamed = oai.completions.create(model="x", prompt=prompt, max_tokens=5, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == direct


def test_ollama_chat_and_generate_plain_and_stream(url, expected):
    client = ollama.Client(host=url)
    reply = client.chat(model="llama3", messages=QUESTION, stream=False)
    assert reply.message.content == ANSWER and reply.model == "tiny-test"
    assert (
        reply.done
        and reply.done_reason == "stop"
        and reply.eval_count == expected.completion_tokens
    )
    parts = list(client.chat(model="llama3", messages=QUESTION, stream=True))
    assert "".join(p.message.content for p in parts) == ANSWER and len(parts) > 5
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    cut = client.chat(model="llama3", messages=QUESTION, options={"num_predict": 3})
    assert cut.done_reason == "length" and cut.eval_count == 3

    generated = client.generate(model="x", prompt="Name a color.")
    assert generated.response == ANSWER
    pieces = list(client.generate(model="x", prompt="Name a color.", stream=True))
    assert "".join(p.response for p in pieces) == ANSWER


def test_ndjson_is_the_ollama_default(url):
    with httpx.stream(
        "POST",
        f"{url}/api/chat",
        json={"model": "m", "messages": QUESTION, "options": {"num_predict": 3}},
    ) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines[-1]["done"] is True and all(not line["done"] for line in lines[:-1])


def test_stop_sequences_end_the_reply(oai, url):
    reply = oai.chat.completions.create(model="x", messages=QUESTION, stop=["nothing", " sky"])
    assert reply.choices[0].message.content == "Blue, like the clear"
    assert reply.choices[0].finish_reason == "stop"
    chunks = oai.chat.completions.create(model="x", messages=QUESTION, stop=" sky", stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Blue, like the clear"
    ollama_reply = ollama.Client(host=url).chat(
        model="m", messages=QUESTION, options={"stop": ["clear"]}
    )
    assert ollama_reply.message.content == "Blue, like the"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"messages": QUESTION, "temperature": 2.5}, "'temperature' must be in [0, 2]"),
        ({"messages": QUESTION, "temperature": "hot"}, "'temperature' must be a number"),
        ({"messages": QUESTION, "max_tokens": 0}, "'max_tokens' must be from 1"),
        ({"messages": QUESTION, "max_tokens": CONTEXT + 1}, "'max_tokens' must be from 1"),
        ({"model": "x"}, "'messages' is required"),
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "role must be one of"),
        (
            {"messages": [{"role": "system", "content": "x"}]},
            "at least one message with role 'user'",
        ),
        ({"messages": [{"role": "user", "content": "word " * 2000}]}, "context is 384 tokens"),
        ({"messages": QUESTION, "n": 2}, "'n' must be"),
        ({"messages": QUESTION, "stream": "yes"}, "'stream' must be true or false"),
    ],
)
def test_openai_bad_requests_are_400_json(url, body, fragment):
    response = httpx.post(f"{url}/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"


def test_odd_values_are_400_not_500(url):
    lone_surrogate = b'{"messages": [{"role": "user", "content": "\\ud800 x"}]}'
    for path in ("/v1/chat/completions", "/api/chat"):
        response = httpx.post(f"{url}{path}", content=lone_surrogate)
        assert response.status_code == 400 and "not valid Unicode" in response.text
    huge_seed = httpx.post(f"{url}/v1/chat/completions", json={"messages": QUESTION, "seed": 2**70})
    assert huge_seed.status_code == 400 and "'seed' must be from" in huge_seed.text
    top_k = httpx.post(f"{url}/api/chat", json={"messages": QUESTION, "options": {"top_k": -1}})
    assert top_k.json() == {"error": "'top_k' must be at least 0, got -1"}


def test_a_failure_mid_stream_ends_with_an_error_event(url, oai, engine, monkeypatch):
    def broken(*args, **kwargs):  # prefill works, the batched steps fail
        if kwargs.get("position_ids") is not None:
            raise RuntimeError("the accelerator caught fire")
        return hidden_states(*args, **kwargs)

    hidden_states = engine.model.hidden_states
    monkeypatch.setattr(engine.model, "hidden_states", broken)
    with pytest.raises(openai.APIError, match="caught fire"):
        list(oai.chat.completions.create(model="x", messages=QUESTION, stream=True))
    with pytest.raises(ollama.ResponseError, match="caught fire"):
        list(ollama.Client(host=url).chat(model="x", messages=QUESTION, stream=True))
    plain = httpx.post(f"{url}/v1/chat/completions", json={"messages": QUESTION})
    assert plain.status_code == 500 and plain.json()["error"]["type"] == "server_error"


def test_malformed_json_and_unknown_routes(url):
    for path in ("/v1/chat/completions", "/v1/completions", "/api/chat", "/api/generate"):
        response = httpx.post(
            f"{url}{path}", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert response.status_code == 400 and "not valid JSON" in json.dumps(response.json())
    response = httpx.post(f"{url}/v1/chat/completions", json=[1, 2])
    assert response.status_code == 400
    assert httpx.get(f"{url}/v1/nothing").status_code == 404
    assert httpx.get(f"{url}/v1/nothing").json()["error"]["type"] == "not_found_error"


def test_ollama_bad_requests(url):
    cases = [
        (
            "/api/chat",
            {"model": "m", "messages": QUESTION, "options": {"temperature": -1}},
            "temperature",
        ),
        (
            "/api/chat",
            {"model": "m", "messages": QUESTION, "options": {"num_predict": 0}},
            "num_predict",
        ),
        ("/api/chat", {"model": "m"}, "'messages' is required"),
        ("/api/generate", {"model": "m", "prompt": "word " * 2000}, "context"),
    ]
    for path, body, fragment in cases:
        response = httpx.post(f"{url}{path}", json=body)
        assert response.status_code == 400 and fragment in response.json()["error"]
    with pytest.raises(ollama.ResponseError) as error:
        ollama.Client(host=url).chat(model="m", messages=QUESTION, options={"temperature": 9})
    assert error.value.status_code == 400
    with pytest.raises(openai.BadRequestError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0).chat.completions.create(
            model="m", messages=QUESTION, temperature=3
        )


def test_concurrent_requests_are_all_answered_correctly(url, expected):
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        if i % 2:
            with httpx.stream(
                "POST", f"{url}/api/chat", timeout=60, json={"messages": QUESTION}
            ) as r:
                results[i] = "".join(
                    json.loads(line)["message"]["content"] for line in r.iter_lines() if line
                )
        else:
            r = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={"messages": QUESTION})
            results[i] = r.json()["choices"][0]["message"]["content"]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == {i: ANSWER for i in range(8)}


def test_an_abandoned_stream_does_not_block_others(url):
    other = [{"role": "user", "content": "Tell me something long."}]
    with httpx.stream(
        "POST",
        f"{url}/v1/chat/completions",
        timeout=30,
        json={"messages": other, "max_tokens": 300, "stream": True},
    ) as response:
        next(response.iter_lines())
    reply = httpx.post(f"{url}/v1/chat/completions", timeout=30, json={"messages": QUESTION})
    assert reply.json()["choices"][0]["message"]["content"] == ANSWER


def test_api_key_is_required_when_set(engine):
    with serve_in_thread(create_app(engine, api_key="s3cret")) as base:
        assert httpx.get(f"{base}/health").status_code == 200
        denied = httpx.post(f"{base}/v1/chat/completions", json={"messages": QUESTION})
        assert (
            denied.status_code == 401 and denied.json()["error"]["type"] == "authentication_error"
        )
        assert (
            httpx.get(f"{base}/api/tags", headers={"Authorization": "Bearer wrong"}).status_code
            == 401
        )
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=f"{base}/v1", api_key="s3cret", max_retries=0)
        reply = good.chat.completions.create(model="m", messages=QUESTION, max_tokens=2)
        content = reply.choices[0].message.content
        assert content and ANSWER.startswith(content) and reply.usage.completion_tokens == 2
        tags = ollama.Client(host=base, headers={"Authorization": "Bearer s3cret"}).list()
        assert tags.models[0].model == "tiny-test"


def test_evaluate_with_this_server_as_ollama_judge(url, tmp_path, capsys):
    responses = tmp_path / "responses.json"
    responses.write_text(json.dumps([RECORD, {**RECORD, "model_response": "Fast car."}, RECORD]))
    code = main(
        [
            "evaluate",
            "--responses",
            str(responses),
            "--judge",
            "ollama:tiny-test",
            "--url",
            url,
            "--concurrency",
            "2",
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    doc = json.loads((tmp_path / "scores.json").read_text())
    assert doc["judge"]["judge"] == "ollama:tiny-test" and doc["judge"]["n"] == 3
    assert all(
        r["judge_error"] is None and isinstance(r["judge_reply"], str) for r in doc["records"]
    )
    assert f"{doc['judge']['n_scored']} scored of 3" in out
    # identical records get identical (greedy) judgements
    assert doc["records"][0]["judge_reply"] == doc["records"][2]["judge_reply"]


def wait_for_health(url: str, process: subprocess.Popen, seconds: float = 90) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the server did not come up"
        try:
            return httpx.get(f"{url}/health", timeout=1).json()
        except httpx.TransportError:
            time.sleep(0.2)


def listening_addresses(port: int) -> set[str]:
    """The addresses with a socket listening on `port`, from the kernel's own table."""
    import ipaddress

    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in list(handle)[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    raw = bytes.fromhex(address)
                    # the kernel prints each 32-bit word in host (little-endian) order
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                    found.add(str(ipaddress.ip_address(words)))
    return found


def test_serve_command_loads_a_run_and_refuses_a_busy_port(engine, tmp_path):
    run = tmp_path / "my-run"
    save_pretrained(engine.model, engine.tokenizer, run / "model", metadata={"style": "alpaca"})
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "instructkit", "serve", "--model", str(run), "--port", str(port),
               "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "INSTRUCTKIT_API_KEY": "k3y"}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert wait_for_health(url, process) == {"status": "ok", "model": "my-run"}
        assert listening_addresses(port) == {"127.0.0.1"}  # loopback unless --host says
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="k3y", max_retries=0)
        reply = client.chat.completions.create(model="whatever", messages=QUESTION)
        assert reply.choices[0].message.content == ANSWER and reply.model == "my-run"
        assert httpx.get(f"{url}/v1/models").status_code == 401

        busy = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert busy.returncode == 2
        assert (
            busy.stderr.strip()
            .splitlines()[-1]
            .startswith(f"error: cannot listen on 127.0.0.1:{port}")
        )
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 130 and "Traceback" not in err  # the CLI's code for Ctrl-C


@pytest.mark.parametrize(
    "command, shown",
    [
        ("serve", ["--model", "(default: 127.0.0.1)", "(default: 8000)", "--max-batch N"]),
        ("generate", ["--model", "(default: "]),
        ("evaluate", ["--responses", "(default: OPENAI_API_KEY)"]),
    ],
)
def test_help_shows_defaults(command, shown, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps long help lines
    for fragment in shown:
        assert fragment in text, fragment


# ---- a big request: capped, and read and tokenised off the event loop ------------------


def test_a_body_over_the_limit_is_413_unread_with_or_without_content_length(url):
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 2_000_000}]}).encode()
    answer = httpx.post(f"{url}/v1/chat/completions", content=big, timeout=30)
    assert answer.status_code == 413
    assert "larger than 1,000,000 bytes" in answer.json()["error"]["message"]
    ollama_answer = httpx.post(f"{url}/api/chat", content=big, timeout=30)
    assert ollama_answer.status_code == 413 and "--max-body-bytes" in ollama_answer.json()["error"]

    def chunked():  # no Content-Length: the cap must hold while reading
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    streamed = httpx.post(f"{url}/v1/chat/completions", content=chunked(), timeout=30)
    assert streamed.status_code == 413
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


class SlowTokenizer:
    """The engine's tokenizer, taking `delay` seconds per long text (a 20 MB prompt's worth)."""

    def __init__(self, tokenizer, delay: float):
        self.tokenizer, self.delay = tokenizer, delay

    def encode(self, text: str) -> list[int]:
        if len(text) > 1000:
            time.sleep(self.delay)
        return self.tokenizer.encode(text)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_health_answers_while_a_big_request_is_tokenised(engine):
    slow = Engine(engine.model, SlowTokenizer(engine.tokenizer, 3.0), engine.style, "slow")
    body = {"messages": [{"role": "user", "content": "word " * 100_000}], "max_tokens": 1}
    with serve_in_thread(create_app(slow)) as base:
        big = threading.Thread(
            target=httpx.post,
            args=(f"{base}/v1/chat/completions",),
            kwargs={"json": body, "timeout": 60},
        )
        big.start()
        time.sleep(0.5)  # the big request is being tokenised now
        started = time.monotonic()
        assert httpx.get(f"{base}/health", timeout=30).status_code == 200
        assert time.monotonic() - started < 1.5
        big.join(60)


def test_serve_refuses_an_empty_api_key_and_a_body_limit_or_batch_cap_below_1(capsys):
    assert main(["serve", "--model", "random:tiny", "--api-key", ""]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --api-key is empty")
    assert main(["serve", "--model", "random:tiny", "--max-body-bytes", "0"]) == 2
    assert "--max-body-bytes must be at least 1, got 0" in capsys.readouterr().err
    assert main(["serve", "--model", "random:tiny", "--max-batch", "0"]) == 2
    assert "--max-batch must be at least 1, got 0" in capsys.readouterr().err
