"""`instructkit chat`: driven through stdin with a tiny random model saved to a directory."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
import torch

from instructkit.cli import main
from instructkit.commands.chat import reply_text
from instructkit.data import get_style
from instructkit.generate import generate_batch
from instructkit.model import GPTConfig, GPTModel, save_pretrained
from instructkit.tokenizer import train_tokenizer

TEXTS = ["Name three primary colors.", "Red, blue and yellow.", "What is the capital of France?"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tokenizer = train_tokenizer(TEXTS * 20, vocab_size=300)
    torch.manual_seed(0)
    config = GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, tie_embeddings=False)
    model = GPTModel(config)
    directory = tmp_path_factory.mktemp("chat") / "model"
    save_pretrained(model, tokenizer, directory, metadata={"style": "alpaca"})
    return directory, model.eval(), tokenizer


def expected_reply(model, tokenizer, instruction: str, max_new_tokens: int) -> str:
    prompt = get_style("alpaca").prompt({"instruction": instruction, "input": ""})
    ids = generate_batch(
        model, [tokenizer.encode(prompt)], max_new_tokens, eos_id=tokenizer.eos_id
    )[0]
    return tokenizer.decode(ids).lstrip()


def test_chat_answers_each_line_until_exit(model_dir):
    directory, model, tokenizer = model_dir
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "instructkit",
            "chat",
            "--model",
            str(directory),
            "--max-new-tokens",
            "12",
        ],
        input="Name three primary colors.\n\nWhat is the capital of France?\n/exit\nNot read.\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "style alpaca" in result.stderr
    replies = [
        expected_reply(model, tokenizer, "Name three primary colors.", 12),
        expected_reply(model, tokenizer, "What is the capital of France?", 12),
    ]
    assert result.stdout == "".join(reply + "\n" for reply in replies)
    assert all(replies)


def test_chat_stops_at_end_of_input_and_rejects_bad_options(model_dir, monkeypatch, capsys):
    directory, model, tokenizer = model_dir
    monkeypatch.setattr(sys, "stdin", io.StringIO("Say something\n"))
    assert main(["chat", "--model", str(directory), "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out == expected_reply(model, tokenizer, "Say something", 4) + "\n"
    assert main(["chat", "--model", str(directory), "--top-p", "0"]) == 2
    assert "top_p must be in (0, 1]" in capsys.readouterr().err


class CharTokenizer:
    """One token per character; token 0 decodes half of a two-byte character."""

    def decode(self, ids):
        return "".join("\ufffd" if i == 0 else chr(i) for i in ids)


def test_reply_text_holds_back_partial_characters_and_stop_strings():
    tokenizer = CharTokenizer()
    pieces = list(reply_text([ord(" "), ord("h"), 0, ord("i")], tokenizer))
    assert pieces == ["h", "\ufffdi"]  # the stand-in never completes: flushed at the end
    tokens = [ord(c) for c in "ok <|im_end|> never"]
    pieces = list(reply_text(tokens, tokenizer, ("<|im_end|>",)))
    assert "".join(pieces) == "ok "
    assert all("<" not in piece for piece in pieces)
    pieces = list(reply_text([ord(c) for c in "a <|im"], tokenizer, ("<|im_end|>",)))
    assert "".join(pieces) == "a <|im"  # not a stop after all: shown when the reply ends


def test_a_message_longer_than_the_context_is_one_line_exit_2_not_a_silent_cut(
    model_dir, monkeypatch, capsys
):
    directory, model, _ = model_dir
    long_line = "Name three primary colors. " * model.config.context_length
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"Say something\n{long_line}\nNot read.\n"))
    assert main(["chat", "--model", str(directory), "--max-new-tokens", "4"]) == 2
    captured = capsys.readouterr()
    (line,) = [text for text in captured.err.splitlines() if text.startswith("error")]
    assert line.startswith("error: the message is ") and (
        f"this model's context is {model.config.context_length} tokens" in line
    )
    assert captured.out.count("\n") == 1  # the first message was answered, nothing after

    assert main(["generate", "--model", str(directory), "--prompt", long_line]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: the prompt is ") and "the reply needs at least one" in line
