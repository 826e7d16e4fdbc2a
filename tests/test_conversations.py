"""Tests for conversations: which tokens a conversation trains (literal masks, and masks
equal to transformers' `{% generation %}` assistant masks), and the dataset built on them."""

from __future__ import annotations

import pytest
from chat_fixtures import TEMPLATES, reference_tokenizer, write_chat_tokenizer

from instructkit.data import InstructionCollator, InstructionDataset, get_style
from instructkit.data.chat_template import resolve_style
from instructkit.data.conversations import assistant_spans, tokenize_conversation
from instructkit.errors import UserError
from instructkit.tokenizer import HFTokenizer, load_tokenizer

TWO_TURNS = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Yo"},
    {"role": "user", "content": "Q"},
    {"role": "assistant", "content": "A"},
]


@pytest.fixture(scope="module")
def char_tokenizer() -> HFTokenizer:
    """Byte-level BPE without merges: one token per ASCII character, plus ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=256 + len(specials),
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(["x"], trainer=trainer)
    return HFTokenizer(backend, "chars")


def marks(mask) -> str:
    return "".join("1" if trained else "0" for trained in mask)


def test_chatml_conversation_trains_every_answer_and_its_end_of_turn(char_tokenizer):
    ids, mask = tokenize_conversation(get_style("chatml"), char_tokenizer, TWO_TURNS)
    assert char_tokenizer.decode(ids) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nYo<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
        "<|im_start|>assistant\nA<|im_end|>\n"
    )
    assert marks(mask) == (
        "00000000000"  # <|im_start|> s y s t e m \n S <|im_end|> \n
        "0000000000"  # <|im_start|> u s e r \n H i <|im_end|> \n
        "00000000000"
        "111"
        "0"  # <|im_start|> assistant \n | Y o <|im_end|> | \n
        "000000000"  # <|im_start|> u s e r \n Q <|im_end|> \n
        "00000000000"
        "11"
        "0"  # <|im_start|> assistant \n | A <|im_end|> | \n
    )
    trained = [char_tokenizer.decode([i]) for i, m in zip(ids, mask) if m]
    assert trained == ["Y", "o", "<|im_end|>", "A", "<|im_end|>"]


def test_train_on_all_marks_every_token(char_tokenizer):
    ids, mask = tokenize_conversation(get_style("chatml"), char_tokenizer, TWO_TURNS, "all")
    assert len(ids) == len(mask) == 59 and all(mask)
    with pytest.raises(UserError, match="train_on"):
        tokenize_conversation(get_style("chatml"), char_tokenizer, TWO_TURNS, "users")


CONVERSATIONS = [
    TWO_TURNS,
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "  Paris is the capital.\n"},
        {"role": "user", "content": "Thank you! café 日本"},
        {"role": "assistant", "content": "You are welcome."},
        {"role": "user", "content": "Rewrite the sentence: the cat sat on the mat."},
        {"role": "assistant", "content": "The cat was on the mat."},
    ],
]


@pytest.mark.parametrize("family", sorted(TEMPLATES))
@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_masks_equal_transformers_generation_masks(tmp_path, family, index):
    # The templates mark each answer with {% generation %}; transformers turns those marks
    # into a token mask from character offsets, without rendering prefixes as we do.
    directory = write_chat_tokenizer(tmp_path, family)
    tokenizer = load_tokenizer(directory)
    messages = CONVERSATIONS[index]
    ids, mask = tokenize_conversation(resolve_style(None, tokenizer), tokenizer, messages)
    theirs = reference_tokenizer(directory).apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert ids == theirs["input_ids"]
    assert marks(mask) == marks(theirs["assistant_masks"])
    assert mask.count(True) > 0


def test_qwen3_earlier_answers_are_found_without_their_think_block(tmp_path):
    tokenizer = load_tokenizer(write_chat_tokenizer(tmp_path, "qwen3"))
    style = resolve_style(None, tokenizer)
    full, spans = assistant_spans(style, CONVERSATIONS[1])
    assert [full[start:end] for start, end in spans] == [
        "  Paris is the capital.\n<|im_end|>",
        "You are welcome.<|im_end|>",
        "<think>\n\n</think>\n\nThe cat was on the mat.<|im_end|>",
    ]


def test_a_template_that_drops_an_answer_is_reported(char_tokenizer):
    from instructkit.data.chat_template import ChatTemplateStyle

    silent = ChatTemplateStyle(
        "{% for m in messages %}{% if m.role != 'assistant' or loop.last %}{{ m.content }}"
        "{% endif %}{% endfor %}"
    )
    with pytest.raises(UserError, match="cannot find assistant turn 2"):
        tokenize_conversation(silent, char_tokenizer, TWO_TURNS)


# --- the dataset ----------------------------------------------------------------------


def test_dataset_tokenizes_conversations_and_instruction_records_with_the_template(tmp_path):
    tokenizer = load_tokenizer(write_chat_tokenizer(tmp_path, "llama3"))
    record = {"instruction": "Rewrite the sentence.", "input": "", "output": "The cat sat."}
    as_messages = {
        "messages": [
            {"role": "user", "content": "Rewrite the sentence."},
            {"role": "assistant", "content": "The cat sat."},
        ]
    }
    dataset = InstructionDataset([record, as_messages, {"messages": TWO_TURNS}], tokenizer, None)
    assert dataset.style.name == "chat_template"
    first, second, third = dataset.examples
    assert first == second
    style = dataset.style
    assert first.input_ids == tokenizer.encode(style.render(as_messages["messages"]))
    assert first.prompt_length == len(tokenizer.encode(style.prompt(record)))
    assert third.loss_mask == tokenize_conversation(style, tokenizer, TWO_TURNS)[1]
    everything = InstructionDataset([record], tokenizer, None, train_on="all")
    assert everything.examples[0].loss_mask == (True,) * len(first)
    batch = InstructionCollator(tokenizer.eos_id)(dataset.examples)
    assert batch.num_target_tokens == sum(e.loss_mask[1:].count(True) for e in dataset.examples)


def test_gpt2_datasets_are_unchanged_and_conversations_need_a_chat_style(
    small_tokenizer, example_records
):
    dataset = InstructionDataset(example_records[:3], small_tokenizer)
    assert all(example.loss_mask is None for example in dataset.examples)
    with pytest.raises(UserError, match="formats instruction records only"):
        InstructionDataset([{"messages": TWO_TURNS}], small_tokenizer)
    chatml = InstructionDataset([{"messages": TWO_TURNS}], small_tokenizer, "chatml")
    example = chatml.examples[0]
    trained = [i for i, m in zip(example.input_ids, example.loss_mask) if m]
    assert small_tokenizer.decode(trained) == "Yo<|im_end|>A<|im_end|>"
