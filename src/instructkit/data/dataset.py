"""Stage 2a: the pre-tokenized instruction dataset (the book's `InstructionDataset`, 7.3).

Every record is tokenized once, as the book does (`tokenizer.encode(prompt + response)`),
so `dataset[i]` is the book's token id list and the book's DataLoader code runs unchanged.
Each example also keeps its prompt length in tokens, which prompt masking and `inspect`
need: it is the number of leading tokens of the full text that the prompt alone
tokenizes to (a token spanning the prompt/response boundary counts as response).

Conversations, and every record under a model's own chat template, are rendered with the
template and carry a per-token `loss_mask` instead (`data/conversations.py`): only the
assistant turns are trained, unless `train_on="all"`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset

from instructkit import console
from instructkit.data.chat_template import ChatTemplateStyle, resolve_style
from instructkit.data.conversations import is_conversation, to_messages, tokenize_conversation
from instructkit.data.prompts import PromptStyle
from instructkit.tokenizer import Tokenizer, as_tokenizer


@dataclass(frozen=True, slots=True)
class Example:
    """One tokenized record: prompt + response ids (no end-of-text), and the prompt's length.

    `loss_mask`, when set (conversations), says per token whether it is a training target
    (predicting it from the tokens before counts in the loss); it overrides prompt masking,
    and the end-of-text target the collator puts after the last token is not trained,
    since the chat template already closed the turn. `prompt_length` is then the number of tokens before the
    first trained one.
    """

    input_ids: list[int]
    prompt_length: int
    loss_mask: tuple[bool, ...] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


class InstructionDataset(Dataset):
    """Records tokenized once; `ds[i]` is a list of ids (book), `ds.examples[i]` an Example."""

    def __init__(
        self,
        data: list[dict],
        tokenizer,
        style: str | PromptStyle | None = "alpaca",
        train_on: str = "assistant",
        *,
        progress: bool = False,
    ):
        self.data = data
        self.tokenizer: Tokenizer = as_tokenizer(tokenizer)
        self.style = resolve_style(style, self.tokenizer)  # None: the model's chat template
        self.train_on = train_on
        records = console.progress(data, "tokenizing", "record", enabled=progress)
        self.examples = [self._tokenize(record) for record in records]
        self.encoded_texts = [example.input_ids for example in self.examples]  # book's name

    def _tokenize(self, record: dict) -> Example:
        if is_conversation(record) or isinstance(self.style, ChatTemplateStyle):
            ids, mask = tokenize_conversation(
                self.style, self.tokenizer, to_messages(record), self.train_on
            )
            return Example(ids, mask.index(True) if True in mask else len(ids), mask)
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
