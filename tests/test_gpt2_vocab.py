"""The real GPT-2 vocabulary, offline: `../shared/data/gpt2.tiktoken` holds the BPE ranks
of tiktoken's `gpt2` (50,257 tokens). The book's dataset and collate code, run with a
tiktoken encoding built here from those ranks, is the reference for instructkit's on the
book's 1,100 records; a fine-tuning run through the CLI uses the file as --tokenizer."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from book_code import BookInstructionDataset, book_collate
from shared_data import SHARED_DATA
from torch.utils.data import DataLoader

from instructkit.cli import main
from instructkit.data import InstructionDataset, custom_collate_fn, load_instructions
from instructkit.tokenizer import load_tokenizer

RANKS = SHARED_DATA / "gpt2.tiktoken"
BOOK_DATA = SHARED_DATA / "instruction-data.json"
pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(
        not (RANKS.is_file() and BOOK_DATA.is_file()),
        reason=f"needs {RANKS} and {BOOK_DATA} (the shared book data is absent)",
    ),
]
# The pre-tokenization regex of OpenAI's GPT-2 encoder.py.
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@pytest.fixture(scope="module")
def reference():
    """A tiktoken encoding made here from the ranks file, as tiktoken's `gpt2` is made."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    return tiktoken.Encoding(
        name="gpt2-reference",
        pat_str=GPT2_SPLIT,
        mergeable_ranks=load_tiktoken_bpe(str(RANKS)),
        special_tokens={"<|endoftext|>": 50256},
    )


@pytest.fixture(scope="module")
def ours():
    return load_tokenizer(RANKS)


def test_it_is_the_gpt2_vocabulary(ours, reference):
    assert ours.vocab_size == reference.n_vocab == 50257 and ours.eos_id == 50256
    assert ours.encode("Hello, world!") == [15496, 11, 995, 0]  # GPT-2's well-known ids
    assert ours.encode("<|endoftext|>") == [50256]
    text = "Rewrite the sentence using a simile.\n\n  The car's  very fast!"
    assert ours.encode(text) == reference.encode(text)
    assert ours.decode(reference.encode(text)) == text


def test_book_parity_on_the_1100_records(ours, reference):
    book_records = json.loads(BOOK_DATA.read_text(encoding="utf-8"))
    assert len(book_records) == 1100
    book = BookInstructionDataset(book_records, reference)
    dataset = InstructionDataset(load_instructions(BOOK_DATA), ours)
    assert len(dataset) == 1100
    for i in range(len(book)):
        assert dataset[i] == book[i], i

    # The book's DataLoader code, unchanged, against the book's per-item collate.
    loader = DataLoader(
        dataset,
        batch_size=8,
        shuffle=False,
        collate_fn=partial(custom_collate_fn, device="cpu", allowed_max_length=1024),
    )
    book_loader = DataLoader(
        book,
        batch_size=8,
        shuffle=False,
        collate_fn=partial(book_collate, device="cpu", allowed_max_length=1024),
    )
    batches = 0
    for (inputs, targets), (book_inputs, book_targets) in zip(loader, book_loader, strict=True):
        assert torch.equal(inputs, book_inputs) and torch.equal(targets, book_targets)
        batches += 1
    assert batches == 138


def test_finetune_with_the_gpt2_tiktoken_file(reference, tmp_path):
    records = json.loads(BOOK_DATA.read_text(encoding="utf-8"))[:20]
    data = tmp_path / "records.json"
    data.write_text(json.dumps(records))
    out = tmp_path / "run"
    command = ["finetune", "--data", str(data), "--tokenizer", str(RANKS), "--model",
               "random:tiny", "--out", str(out), "--batch-size", "2", "--max-steps", "2",
               "--eval-every", "0", "--eval-batches", "1", "--save-every", "0", "--device",
               "cpu", "--quiet"]  # fmt: skip
    assert main(command) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert rows[0]["train_loss"] == pytest.approx(torch.log(torch.tensor(50257.0)).item(), rel=0.05)

    from instructkit.model import load_pretrained

    model, tokenizer = load_pretrained(str(out))
    assert model.config.vocab_size == 50257 and tokenizer.vocab_size == 50257
    for record in records:  # the saved tokenizer.json encodes as GPT-2 does
        text = record["instruction"] + "\n" + record["input"] + "\n" + record["output"]
        assert tokenizer.encode(text) == reference.encode(text)
