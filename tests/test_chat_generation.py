"""Generation wired to chat tokenizers, in-process: every end id stops a reply, a padded
vocabulary never yields an id the tokenizer lacks, serve renders the whole conversation
with the template (alpaca keeps the last user message), and `chat` keeps its history
within the context. References: transformers' tokenizer and `apply_chat_template`."""

from __future__ import annotations

import pytest
import torch
from chat_fixtures import reference_tokenizer

import instructkit.generate as generation
from instructkit.commands.chat import fit_history, prompt_limit
from instructkit.config import GenerationConfig
from instructkit.data import get_style, resolve_style
from instructkit.generate import generate_batch
from instructkit.loading import load_for_generation
from instructkit.responses import respond
from instructkit.serve import Engine, RequestError, SamplingParams

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HISTORY = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "Rewrite: the cat sat."},
    {"role": "assistant", "content": "The cat was sitting."},
    {"role": "user", "content": "Thank you!"},
]


@pytest.mark.parametrize(
    ("family", "ends"),
    [("llama", ["<|eot_id|>", "<|end_of_text|>"]), ("qwen3", ["<|im_end|>", "<|endoftext|>"])],
)
def test_every_generation_path_ends_at_every_end_id(chat_model_dir, family, ends, monkeypatch):
    model, tokenizer, style = load_for_generation(str(chat_model_dir(family)))
    expected = tuple(reference_tokenizer(chat_model_dir(family)).convert_tokens_to_ids(ends))
    config = GenerationConfig(max_new_tokens=3, stop_ids=(7,)).for_tokenizer(tokenizer)
    assert config.end_ids == (*expected, 7) and config.vocab_size == tokenizer.vocab_size

    engine = Engine(model, tokenizer, style, "m", max_new_tokens=3)
    assert set(engine.config.end_ids) == set(expected)
    seen = []
    real = generation.generate_batch
    monkeypatch.setattr(
        generation,
        "generate_batch",
        lambda *a, config, **k: seen.append(config) or real(*a, config=config, **k),
    )
    respond(model, tokenizer, style, "Hi", max_new_tokens=3)
    assert set(seen[0].end_ids) == set(expected) and seen[0].vocab_size == tokenizer.vocab_size


def test_a_padded_vocabulary_never_generates_ids_past_the_tokenizer(chat_model_dir):
    model, tokenizer, style = load_for_generation(str(chat_model_dir("qwen2", padding=16)))
    assert model.config.vocab_size == tokenizer.vocab_size + 16
    with torch.no_grad():  # make the padding rows the likeliest, as if never trained
        model.lm_head.weight[tokenizer.vocab_size :] *= 50
    prompt = [tokenizer.encode(style.prompt({"instruction": "Hi", "input": ""}))]
    plain = generate_batch(model, prompt, config=GenerationConfig(max_new_tokens=8))
    assert max(plain[0]) >= tokenizer.vocab_size  # the test bites
    config = GenerationConfig(max_new_tokens=8).for_tokenizer(tokenizer)
    assert max(generate_batch(model, prompt, config=config)[0]) < tokenizer.vocab_size
    assert isinstance(respond(model, tokenizer, style, "Hi", max_new_tokens=8), str)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_serve_renders_the_whole_conversation_as_transformers_does(chat_model_dir, family):
    directory = chat_model_dir(family)
    model, tokenizer, style = load_for_generation(str(directory))
    engine = Engine(model, tokenizer, style, "m", max_new_tokens=2)
    generation_ = engine.chat(HISTORY, SamplingParams())
    reference = reference_tokenizer(directory)
    assert generation_.prompt == reference.apply_chat_template(
        HISTORY, tokenize=False, add_generation_prompt=True
    )
    developer = [{"role": "developer", "content": "Answer briefly."}, *HISTORY[1:]]
    assert engine.chat(developer, SamplingParams()).prompt == generation_.prompt
    with pytest.raises(RequestError, match="role 'user'"):
        engine.chat(HISTORY[:1], SamplingParams())


def test_alpaca_serving_keeps_the_last_user_message(small_tokenizer):
    from instructkit.model import load_pretrained

    model, tokenizer = load_pretrained("random:tiny", tokenizer=small_tokenizer)
    engine = Engine(model, tokenizer, get_style("alpaca"), "m", max_new_tokens=2)
    prompt = engine.chat(HISTORY, SamplingParams()).prompt
    assert prompt == get_style("alpaca").prompt(
        {"instruction": "Thank you!", "input": "Answer briefly."}
    )


def test_chat_history_drops_the_oldest_turns_and_keeps_the_system_prompt(chat_model_dir):
    directory = chat_model_dir("qwen2")
    from instructkit.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(directory)
    style = resolve_style(None, tokenizer)
    reference = reference_tokenizer(directory)

    def length(messages):
        text = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return len(reference.encode(text, add_special_tokens=False))

    kept, ids = fit_history(style, tokenizer, HISTORY, length(HISTORY))
    assert kept == HISTORY and len(ids) == length(HISTORY)
    limit = length(HISTORY) - 1  # one token too many: the oldest pair goes
    kept, ids = fit_history(style, tokenizer, HISTORY, limit)
    assert kept == [HISTORY[0], *HISTORY[3:]] and len(ids) == length(kept) <= limit
    kept, _ = fit_history(style, tokenizer, HISTORY, 1)  # nothing fits: the last turn stays
    assert kept == [HISTORY[0], HISTORY[-1]]
    assert prompt_limit(256, 40) == 216 and prompt_limit(256, 1000) == 128
