"""Stages 1-2 of the pipeline: records, prompts, splits, the tokenized dataset and batches.

The book's names (`format_input`, `InstructionDataset`, `custom_collate_fn`) work as in
chapter 7; the rest adds validation, more prompt styles (a model's own chat template
among them), conversations, prompt masking, packing and length-aware batching. The built-in demo dataset lives in `instructkit.data.builtin`.
"""

from instructkit.data.chat_template import ChatTemplateStyle, default_style_for, resolve_style
from instructkit.data.collate import (
    Batch,
    InstructionCollator,
    count_untrained,
    custom_collate_fn,
)
from instructkit.data.conversations import is_conversation, to_messages, tokenize_conversation
from instructkit.data.dataset import Example, InstructionDataset
from instructkit.data.prompts import STYLE_NAMES, PromptStyle, format_input, get_style
from instructkit.data.records import load_instructions, parse_fields
from instructkit.data.sampling import (
    LengthGroupedSampler,
    PackedBatchSampler,
    RandomBatchSampler,
    build_loader,
    pack_lengths,
)
from instructkit.data.splits import (
    SPLIT_METHODS,
    SPLIT_NAMES,
    resolve_split_method,
    split_book,
    split_by_field,
    split_records,
    split_shuffled,
)

__all__ = [
    "SPLIT_METHODS",
    "SPLIT_NAMES",
    "STYLE_NAMES",
    "Batch",
    "ChatTemplateStyle",
    "Example",
    "InstructionCollator",
    "InstructionDataset",
    "LengthGroupedSampler",
    "PackedBatchSampler",
    "PromptStyle",
    "RandomBatchSampler",
    "build_loader",
    "count_untrained",
    "custom_collate_fn",
    "default_style_for",
    "format_input",
    "get_style",
    "is_conversation",
    "load_instructions",
    "pack_lengths",
    "parse_fields",
    "resolve_split_method",
    "resolve_style",
    "split_book",
    "split_by_field",
    "split_records",
    "split_shuffled",
    "to_messages",
    "tokenize_conversation",
]
