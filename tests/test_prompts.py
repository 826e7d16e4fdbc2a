"""Tests for prompt styles: byte-exact templates, prompt/response split, response extraction."""

from __future__ import annotations

import pytest

from instructkit.data import STYLE_NAMES, format_input, get_style
from instructkit.errors import UserError

WITH_INPUT = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
NO_INPUT = {"instruction": "Name a color.", "input": "", "output": "Blue."}


def test_format_input_is_the_books_byte_for_byte():
    assert format_input(WITH_INPUT) == (
        "Below is an instruction that describes a task. Write a response that "
        "appropriately completes the request.\n\n### Instruction:\nAdd the numbers."
        "\n\n### Input:\n2 and 3"
    )
    assert format_input(NO_INPUT) == (
        "Below is an instruction that describes a task. Write a response that "
        "appropriately completes the request.\n\n### Instruction:\nName a color."
    )


@pytest.mark.parametrize("record", [WITH_INPUT, NO_INPUT])
def test_alpaca_full_text_is_the_books_training_text(record):
    style = get_style("alpaca")
    book_full_text = format_input(record) + f"\n\n### Response:\n{record['output']}"
    assert style.text(record) == book_full_text
    assert style.prompt(record) == format_input(record) + "\n\n### Response:\n"
    assert style.response(record) == record["output"]


def test_phi3_is_the_books_exercise_7_1():
    style = get_style("phi3")
    assert style.text(WITH_INPUT) == "<|user|>\nAdd the numbers.\n2 and 3\n<|assistant|>:\n5"
    assert style.text(NO_INPUT) == "<|user|>\nName a color.\n<|assistant|>:\nBlue."
    assert style.prompt(NO_INPUT) == "<|user|>\nName a color.\n<|assistant|>:\n"


def test_chatml_layout():
    style = get_style("chatml")
    assert style.text(WITH_INPUT) == (
        "<|im_start|>user\nAdd the numbers.\n\n2 and 3<|im_end|>\n"
        "<|im_start|>assistant\n5<|im_end|>"
    )
    assert style.prompt(NO_INPUT) == (
        "<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("name", [name for name in STYLE_NAMES if name != "chat_template"])
def test_every_style_prompt_is_a_prefix_and_extracts_its_response(name):
    # chat_template is built from a tokenizer: tests/test_chat_template.py covers it.
    style = get_style(name)
    prompt = style.prompt(WITH_INPUT)
    assert style.text(WITH_INPUT).startswith(prompt)
    assert style.extract_response(style.text(WITH_INPUT), prompt) == "5"
    assert get_style(style) is style


def test_extract_response_like_the_book():
    style = get_style("alpaca")
    prompt = style.prompt(NO_INPUT)
    assert style.extract_response(prompt + "  Blue.\n", prompt) == "Blue."
    # Decoded text that differs from the prompt falls back to the last response header.
    assert style.extract_response("garbled ### Response:\n Red ", prompt) == "Red"
    # A repeated header at the start of the answer is removed, as the book's replace does.
    assert style.extract_response(prompt + "### Response:\nGreen", prompt) == "Green"


def test_stop_strings_cut_the_answer():
    style = get_style("chatml")
    prompt = style.prompt(NO_INPUT)
    assert style.extract_response(prompt + "Blue.<|im_end|>\n<|im_start|>user", prompt) == "Blue."
    phi3 = get_style("phi3")
    prompt = phi3.prompt(NO_INPUT)
    assert phi3.extract_response(prompt + "Blue.\n<|user|>\nmore", prompt) == "Blue."


def test_unknown_style():
    with pytest.raises(UserError) as caught:
        get_style("llama9")
    assert caught.value.problems == [
        "unknown prompt style 'llama9'; choose one of: alpaca, phi3, chatml, chat_template"
    ]
