"""Tests for InstructionDataset: the book's token lists, exact prompt lengths, the book's loop."""

from __future__ import annotations

from functools import partial

import pytest
import tiktoken
import torch
from torch.utils.data import DataLoader

from instructkit.data import Example, InstructionDataset, custom_collate_fn, format_input, get_style
from instructkit.tokenizer import EOS_TOKEN, GPT2_PATTERN, train_tokenizer


def book_encoded_texts(data, tokenizer):
    """The book's InstructionDataset.__init__ (section 7.3), verbatim."""
    encoded_texts = []
    for entry in data:
        instruction_plus_input = format_input(entry)
        response_text = f"\n\n### Response:\n{entry['output']}"
        full_text = instruction_plus_input + response_text
        encoded_texts.append(tokenizer.encode(full_text))
    return encoded_texts


@pytest.fixture(scope="module")
def encoding(small_tokenizer):
    """A plain tiktoken Encoding, the kind of object the book passes."""
    vocab = small_tokenizer.backend.get_vocab()
    from instructkit.tokenizer import _byte_to_unicode

    to_byte = {char: byte for byte, char in _byte_to_unicode().items()}
    ranks = {
        bytes(to_byte[c] for c in token): i for token, i in vocab.items() if token != EOS_TOKEN
    }
    return tiktoken.Encoding(
        "small",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={EOS_TOKEN: small_tokenizer.eos_id},
    )


def test_items_are_the_books_token_lists_with_a_tiktoken_encoding(example_records, encoding):
    dataset = InstructionDataset(example_records, encoding)
    expected = book_encoded_texts(example_records, encoding)
    assert [dataset[i] for i in range(len(dataset))] == expected
    assert dataset.encoded_texts == expected
    assert len(dataset) == len(example_records) == 20


def test_items_are_the_books_token_lists_with_our_tokenizer(example_records, small_tokenizer):
    dataset = InstructionDataset(example_records, small_tokenizer)
    assert dataset.encoded_texts == book_encoded_texts(example_records, small_tokenizer)


@pytest.mark.parametrize("style", ["alpaca", "phi3", "chatml"])
def test_prompt_length_is_the_tokenized_prompt(example_records, small_tokenizer, style):
    dataset = InstructionDataset(example_records, small_tokenizer, style=style)
    prompt_style = get_style(style)
    for record, example in zip(example_records, dataset.examples):
        prompt_ids = small_tokenizer.encode(prompt_style.prompt(record))
        assert isinstance(example, Example)
        assert example.input_ids == small_tokenizer.encode(prompt_style.text(record))
        assert example.prompt_length == len(prompt_ids)
        assert example.input_ids[: example.prompt_length] == prompt_ids
        assert len(example) > example.prompt_length


def test_token_straddling_the_boundary_counts_as_response():
    # Trained on "\n   x", the tokenizer merges the prompt's final "\n" with the answer's
    # leading spaces, so that token belongs to both; it is counted as response.
    tokenizer = train_tokenizer(["### Response:\n   x\n"] * 50, vocab_size=300)
    record = {"instruction": "Indent.", "input": "", "output": "   x"}
    example = InstructionDataset([record], tokenizer).examples[0]
    prompt_ids = tokenizer.encode(get_style("alpaca").prompt(record))
    assert example.prompt_length == len(prompt_ids) - 1
    assert example.input_ids[: example.prompt_length] == prompt_ids[:-1]
    assert example.input_ids[example.prompt_length] != prompt_ids[-1]


def test_the_books_training_loader_runs_unchanged(example_records, small_tokenizer):
    train_dataset = InstructionDataset(example_records, small_tokenizer)
    customized_collate_fn = partial(
        custom_collate_fn,
        pad_token_id=small_tokenizer.eos_id,
        device="cpu",
        allowed_max_length=1024,
    )
    torch.manual_seed(123)
    train_loader = DataLoader(
        train_dataset,
        batch_size=8,
        collate_fn=customized_collate_fn,
        shuffle=True,
        drop_last=True,
        num_workers=0,
    )
    shapes = [(inputs.shape, targets.shape) for inputs, targets in train_loader]
    assert len(shapes) == 2
    for input_shape, target_shape in shapes:
        assert input_shape == target_shape and input_shape[0] == 8
    assert train_dataset.lengths == [len(ids) for ids in train_dataset.encoded_texts]
