"""Stage 2a: the pre-tokenized instruction dataset (the book's `InstructionDataset`, 7.3).

Every record is tokenized once, as the book does (`tokenizer.encode(prompt + response)`),
so `dataset[i]` is the book's token id list and the book's DataLoader code runs unchanged.
Each example also keeps its prompt length in tokens, which prompt masking and `inspect`
need: it is the number of leading tokens of the full text that the prompt alone
tokenizes to (a token spanning the prompt/response boundary counts as response).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset

from instructkit.data.prompts import PromptStyle, get_style
from instructkit.tokenizer import Tokenizer, as_tokenizer


@dataclass(frozen=True, slots=True)
class Example:
    """One tokenized record: prompt + response ids (no end-of-text), and the prompt's length."""

    input_ids: list[int]
    prompt_length: int

    def __len__(self) -> int:
        return len(self.input_ids)


class InstructionDataset(Dataset):
    """Records tokenized once; `ds[i]` is a list of ids (book), `ds.examples[i]` an Example."""

    def __init__(self, data: list[dict], tokenizer, style: str | PromptStyle = "alpaca"):
        self.data = data
        self.tokenizer: Tokenizer = as_tokenizer(tokenizer)
        self.style = get_style(style)
        self.examples = [self._tokenize(record) for record in data]
        self.encoded_texts = [example.input_ids for example in self.examples]  # book's name

    def _tokenize(self, record: dict) -> Example:
        prompt = self.style.prompt(record)
        ids = self.tokenizer.encode(prompt + self.style.response(record))
        prompt_ids = self.tokenizer.encode(prompt)
        shared = 0
        for ours, theirs in zip(ids, prompt_ids):
            if ours != theirs:
                break
            shared += 1
        return Example(ids, shared)

    @property
    def lengths(self) -> list[int]:
        return [len(example.input_ids) for example in self.examples]

    def __getitem__(self, index: int) -> list[int]:
        return self.encoded_texts[index]

    def __len__(self) -> int:
        return len(self.data)
