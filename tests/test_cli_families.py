"""Llama 3 / Qwen2 / Qwen3 through every CLI stage, as subprocesses, on tiny random checkpoints
that transformers wrote (tests/conftest.py `chat_model_dir`): finetune on conversations,
generate, chat, serve, evaluate. The reference for every answer is transformers itself:
its `apply_chat_template` for the prompt and its greedy `generate`, stopping at the
checkpoint's `generation_config.json` end ids, for the reply.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings

import httpx
import openai
import pytest
import torch
from chat_fixtures import TEMPLATES, reference_tokenizer
from fake_servers import free_socket

from instructkit.evaluate.metrics import exact_match, rouge_l

pytestmark = pytest.mark.usefixtures("one_torch_thread")
transformers = pytest.importorskip("transformers")

QUESTION = "What is the capital of France?"
ANSWER = "Paris."
CHAT = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]
LONGER = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Rewrite: the cat sat."},
    {"role": "assistant", "content": "The cat was sitting."},
    {"role": "user", "content": "Thank you!"},
    {"role": "assistant", "content": "You are welcome."},
]
SHAREGPT = {
    "conversations": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": ANSWER}]
}


def write_conversations(path) -> None:
    """Seven training conversations (six teach QUESTION -> ANSWER), one each for val and test."""
    records = [{"messages": CHAT, "split": "train"}] * 6 + [{"messages": LONGER, "split": "train"}]
    records += [{**SHAREGPT, "split": "val"}, {"messages": CHAT, "split": "test"}]
    path.write_text("\n".join(json.dumps(record) for record in records))


def cli(*args: str, stdin: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "instructkit", *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


class Reference:
    """transformers' tokenizer, model and end ids for a model directory."""

    def __init__(self, directory):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.tokenizer = reference_tokenizer(directory)
            self.model = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
            ends = transformers.GenerationConfig.from_pretrained(directory).eos_token_id
        self.end_ids = ends if isinstance(ends, list) else [ends]

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return self.tokenizer.encode(text, add_special_tokens=False)

    def reply(self, messages: list[dict], max_new_tokens: int) -> tuple[list[int], bool]:
        """Greedy new tokens for the conversation, and whether an end id stopped them."""
        ids = self.prompt_ids(messages)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = self.model.generate(
                torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                eos_token_id=self.end_ids, pad_token_id=self.end_ids[0],
            )  # fmt: skip
        new = out[0, len(ids) :].tolist()
        stopped = bool(new) and new[-1] in self.end_ids
        return (new[:-1] if stopped else new), stopped

    def text(self, messages: list[dict], max_new_tokens: int) -> str:
        return self.tokenizer.decode(self.reply(messages, max_new_tokens)[0])


@pytest.fixture(scope="module")
def conversations(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "conversations.jsonl"
    write_conversations(path)
    return path


@pytest.fixture(scope="module")
def qwen3_run(chat_model_dir, conversations, tmp_path_factory):
    """A Qwen3 checkpoint fine-tuned (through the CLI) until it answers QUESTION with ANSWER."""
    out = tmp_path_factory.mktemp("runs") / "qwen3"
    result = cli(
        "finetune", "--data", conversations, "--model", chat_model_dir("qwen3"), "--out", out,
        "--max-steps", 40, "--epochs", 40, "--lr", "1e-2", "--batch-size", 2,
        "--eval-every", 0, "--save-every", 1000, "--quiet",
    )  # fmt: skip
    return out, result.stdout


def test_finetune_qwen3_then_generate_uses_the_template_and_stops_at_im_end(qwen3_run):
    run, stdout = qwen3_run
    assert "Examples with no trained token after truncation to 256 tokens: 0 of 7" in stdout
    model_dir = run / "model"
    reference = Reference(model_dir)
    im_end, endoftext = reference.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert reference.end_ids == [im_end, endoftext]
    saved = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert saved["chat_template"] == TEMPLATES["qwen3"]

    printed = cli("generate", "--model", run, "--prompt", QUESTION, "--max-new-tokens", 30).stdout
    new, stopped = reference.reply([{"role": "user", "content": QUESTION}], 30)
    assert stopped and len(new) < 30  # transformers stops at <|im_end|> too
    assert printed == reference.tokenizer.decode(new).strip() + "\n"
    assert printed.endswith(ANSWER + "\n")  # the template it was trained with


def test_generate_responses_then_evaluate_unchanged(qwen3_run, tmp_path):
    run, _ = qwen3_run
    data = tmp_path / "questions.json"
    records = [{"instruction": QUESTION, "input": "", "output": ANSWER},
               {"instruction": "Thank you!", "input": "", "output": "You are welcome."},
               {"messages": LONGER}]  # fmt: skip
    data.write_text(json.dumps(records))
    out = tmp_path / "responses.json"
    cli("generate", "--model", run, "--data", data, "--split", "all", "--out", out,
        "--max-new-tokens", 30, "--quiet")  # fmt: skip
    responses = json.loads(out.read_text())
    reference = Reference(run / "model")
    for record in responses[:2]:
        user = [{"role": "user", "content": record["instruction"]}]
        assert record["model_response"] == reference.text(user, 30).strip()
    # the conversation is answered at its last turn, which is also what evaluate compares
    assert responses[2]["model_response"] == reference.text(LONGER[:-1], 30).strip()
    assert (
        responses[2]["instruction"] == "Thank you!"
        and responses[2]["output"] == LONGER[-1]["content"]
    )
    scores = tmp_path / "scores.json"
    cli("evaluate", "--responses", out, "--out", scores)
    document = json.loads(scores.read_text())
    assert document["metrics"]["n"] == 3
    for scored, record in zip(document["records"], responses, strict=True):
        assert scored["exact_match"] == exact_match(record["model_response"], record["output"])
        assert scored["rouge_l"] == pytest.approx(
            rouge_l(record["model_response"], record["output"])
        )


def test_llama_lora_finetune_then_generate(chat_model_dir, conversations, tmp_path):
    from safetensors.torch import load_file

    base = chat_model_dir("llama")
    out = tmp_path / "llama-lora"
    result = cli(
        "finetune", "--data", conversations, "--model", base, "--out", out, "--max-steps", 3,
        "--lora-rank", 4, "--lr", "1e-2", "--batch-size", 2, "--eval-every", 0, "--quiet",
    )  # fmt: skip
    assert "LoRA rank 4, alpha 16.0 on 14 layers" in result.stdout  # 7 projections x 2 layers
    adapter = load_file(out / "adapter.safetensors")
    adapted = {name.split(".")[-3] for name in adapter}  # layers.N.mlp.up_proj.lora.A
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    reference = Reference(out / "model")
    assert sorted(reference.end_ids) == sorted(
        reference.tokenizer.convert_tokens_to_ids(["<|eot_id|>", "<|end_of_text|>"])
    )
    assert type(reference.model).__name__ == "LlamaForCausalLM"
    printed = cli("generate", "--model", out, "--prompt", "Thank you!", "--max-new-tokens", 12)
    user = [{"role": "user", "content": "Thank you!"}]
    assert printed.stdout == reference.text(user, 12).strip() + "\n"


def test_chat_is_multi_turn_with_the_system_prompt(qwen3_run):
    run, _ = qwen3_run
    lines = [QUESTION, "Thank you!"]
    result = cli(
        "chat", "--model", run, "--system", "Answer briefly.", "--max-new-tokens", 20,
        stdin="\n".join(lines) + "\n/exit\n",
    )  # fmt: skip
    assert "multi-turn" in result.stderr
    reference = Reference(run / "model")
    history = [{"role": "system", "content": "Answer briefly."}]
    expected = ""
    for line in lines:
        history.append({"role": "user", "content": line})
        reply = reference.text(history, 20).lstrip()
        history.append({"role": "assistant", "content": reply})
        expected += reply + "\n"
    assert result.stdout == expected and expected.strip()


def wait_for_health(url: str, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the server did not come up"
        try:
            httpx.get(f"{url}/health", timeout=1).raise_for_status()
            return
        except httpx.TransportError:
            time.sleep(0.3)


def test_serve_chat_renders_the_whole_conversation(qwen3_run):
    run, _ = qwen3_run
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "instructkit", "serve", "--model", str(run), "--port", str(port),
         "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_health(url, process)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        reference = Reference(run / "model")
        replies = []  # (text, whether an end id stopped it)
        for messages in (
            CHAT[:1],  # what it was taught: the answer, then <|im_end|>
            [*CHAT, {"role": "user", "content": QUESTION}],  # two turns
            [*LONGER, {"role": "user", "content": "Thanks again."}],
        ):
            reply = client.chat.completions.create(model="m", messages=messages, max_tokens=24)
            new, stopped = reference.reply(messages, 24)
            assert reply.usage.prompt_tokens == len(reference.prompt_ids(messages))
            assert reply.choices[0].message.content == reference.tokenizer.decode(new).strip()
            assert reply.usage.completion_tokens == len(new)  # the end id is not reply text
            assert reply.choices[0].finish_reason == ("stop" if stopped else "length")
            replies.append((reply.choices[0].message.content, stopped))
        assert replies[0][0].endswith(ANSWER) and replies[0][1]
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)


def test_data_inspect_conversations_with_a_chat_model(chat_model_dir, conversations):
    model_dir = chat_model_dir("qwen3")
    result = cli("data", "inspect", conversations, "--model", model_dir, "--show-labels", 1,
                 "--check-packing", "--allowed-max-length", 30)  # fmt: skip
    out = result.stdout
    assert "9 records, all valid" in out
    assert "conversations: 9 (messages each: min 2, mean 2.3, p95 5, max 5)" in out
    assert "style chat_template" in out
    reference = reference_tokenizer(model_dir)
    masks = []
    for line in conversations.read_text().splitlines():
        record = json.loads(line)
        messages = record.get("messages") or CHAT
        encoded = reference.apply_chat_template(
            messages, return_dict=True, return_assistant_tokens_mask=True
        )
        masks.append(encoded["assistant_masks"])
    trained = sorted(sum(mask) for mask in masks)
    mean = sum(trained) / len(trained)
    assert f"trained (assistant) tokens: min {trained[0]}, mean {mean:.1f}" in out
    # truncated to 30 tokens, LONGER keeps none of its assistant tokens (its first starts later)
    untrained = sum(not any(mask[1:30]) for mask in masks)
    assert 0 < untrained < len(masks)
    assert f"left with no trained token by truncation: {untrained}" in out
    shown = out.split("\nexample 0:")[1].split("packing self-test")[0].splitlines()[1:]
    labels = [line.split()[-1] for line in shown if line.split() and line.split()[0].isdigit()]
    assert len(labels) == 30 and labels.count("train") == sum(masks[0][1:30]) > 0
    assert "position ids restart at 0 in every packed example" in out
    assert "passed: packing changes nothing the model computes" in out
