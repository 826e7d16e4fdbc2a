"""Generation: the KV cache changes nothing but speed; batching, seeds, eos, cropping."""

from __future__ import annotations

import pytest
import torch

from instructkit.config import GenerationConfig
from instructkit.errors import UserError
from instructkit.generate import generate, generate_batch, sample, stream
from instructkit.model import GPTConfig, GPTModel

VOCAB = 97


def tiny_model(context_length: int = 64, seed: int = 0, drop_rate: float = 0.0) -> GPTModel:
    torch.manual_seed(seed)
    config = GPTConfig.preset(
        "tiny",
        vocab_size=VOCAB,
        context_length=context_length,
        drop_rate=drop_rate,
        tie_embeddings=False,  # a tied random model just repeats its input token
    )
    model = GPTModel(config).eval()
    with torch.no_grad():  # wider logit gaps than GPT-2's init: no near-ties for greedy
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(3)
    return model


def prompts(lengths: list[int], seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in lengths]


def book_generate(model, idx, max_new_tokens, context_size, eos_id=None):
    """The book's loop: recompute the cropped context every step, no cache."""
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(idx[:, -context_size:])[:, -1]
        idx_next = logits.argmax(dim=-1, keepdim=True)
        if idx_next == eos_id:
            break
        idx = torch.cat([idx, idx_next], dim=1)
    return idx


def test_cached_greedy_equals_the_book_loop_token_for_token():
    model = tiny_model()
    idx = torch.tensor(prompts([7, 7]))
    expected = torch.cat([book_generate(model, row[None], 40, 64) for row in idx])
    assert torch.equal(generate(model, idx, 40, context_size=64), expected)
    assert len(set(expected[0, 7:].tolist())) > 3  # a real sequence, not one repeated token


@pytest.mark.parametrize(("prompt_length", "context_size"), [(10, 16), (25, 16), (10, 8), (16, 16)])
def test_cropping_beyond_the_context_window_matches_the_book(prompt_length, context_size):
    model = tiny_model(context_length=16)
    idx = torch.tensor(prompts([prompt_length]))
    expected = book_generate(model, idx, 30, context_size)
    assert torch.equal(generate(model, idx, 30, context_size=context_size), expected)


@pytest.mark.parametrize("context_length", [64, 16])
def test_batched_prompts_of_different_lengths_equal_one_by_one(context_length):
    model = tiny_model(context_length=context_length)
    batch = prompts([3, 12, 1, 7, 9])
    singles = [generate(model, torch.tensor([p]), 25)[0, len(p) :].tolist() for p in batch]
    assert generate_batch(model, batch, 25) == singles
    assert generate_batch(model, batch, 25, batch_size=2) == singles


def test_eos_stops_each_row_independently():
    model = tiny_model()
    batch = prompts([5, 8, 6])
    free = generate_batch(model, batch, 30)
    eos_id = free[0][3]  # row 0 meets it at step 3 at the latest
    expected = [row[: row.index(eos_id)] if eos_id in row else row for row in free]
    assert len(expected[0]) <= 3 and max(len(row) for row in expected) > 3
    assert generate_batch(model, batch, 30, eos_id=eos_id) == expected
    # The tensor form fills finished rows with eos and ends with the longest row.
    same_length = torch.tensor(prompts([6, 6], seed=2))
    free_rows = generate(model, same_length, 30)[:, 6:].tolist()
    eos_id = free_rows[0][2]
    out = generate(model, same_length, 30, eos_id=eos_id)
    for row, full in zip(out[:, 6:].tolist(), free_rows):
        kept = full[: full.index(eos_id)] if eos_id in full else full
        assert row[: len(kept)] == kept and set(row[len(kept) :]) <= {eos_id}
    alone = generate(model, same_length[:1], 30, eos_id=eos_id)  # batch of one: the book exactly
    assert torch.equal(alone, book_generate(model, same_length[:1], 30, 64, eos_id))


def test_seed_reproduces_sampling():
    model = tiny_model()
    idx = torch.tensor(prompts([4, 4]))
    options = {"temperature": 1.0, "top_k": 50, "top_p": 0.95}
    first = generate(model, idx, 30, seed=7, **options)
    assert torch.equal(first, generate(model, idx, 30, seed=7, **options))
    assert not torch.equal(first, generate(model, idx, 30, seed=8, **options))
    batch = prompts([2, 9, 5])
    assert generate_batch(model, batch, 20, seed=3, **options) == generate_batch(
        model, batch, 20, seed=3, **options
    )


def test_stream_yields_the_same_tokens_one_at_a_time():
    model = tiny_model()
    prompt = prompts([6])[0]
    expected = generate_batch(model, [prompt], 20)[0]
    tokens = stream(model, prompt, 20)
    assert next(tokens) == expected[0]
    assert [expected[0], *tokens] == expected
    eos_id = expected[5]
    assert list(stream(model, prompt, 20, eos_id=eos_id)) == expected[: expected.index(eos_id)]


def test_generation_runs_in_eval_mode_and_restores_training_mode():
    model = tiny_model(drop_rate=0.5).train()
    idx = torch.tensor(prompts([5]))
    assert torch.equal(generate(model, idx, 10), generate(model, idx, 10))
    assert model.training
    tokens = stream(model, [1, 2, 3], 5)
    next(tokens)
    assert torch.is_grad_enabled()  # no_grad holds inside each step, not for the caller
    tokens.close()
    assert model.training


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(400, 1)
    generator = torch.Generator().manual_seed(0)
    assert set(sample(logits, 1.0, None, 0.7, generator).tolist()) == {0, 1}
    assert set(sample(logits, 1.0, None, 0.5, generator).tolist()) == {0}
    assert set(sample(logits, 1.0, 3, None, generator).tolist()) == {0, 1, 2}
    assert set(sample(logits, 1.0, None, None, generator).tolist()) == {0, 1, 2, 3}
    assert sample(logits[:1], 0.0, None, None, None).tolist() == [0]


def test_bad_options_and_prompts_are_user_errors():
    model = tiny_model()
    with pytest.raises(UserError, match="top_p must be in"):
        generate(model, torch.tensor([[1, 2]]), 5, temperature=1.0, top_p=0.0)
    with pytest.raises(UserError, match="temperature must be >= 0"):
        generate_batch(model, [[1]], 5, temperature=-1.0)
    with pytest.raises(UserError, match="at least one token"):
        generate_batch(model, [[1], []], 5)
    assert generate(model, torch.tensor([[1, 2]]), 0).tolist() == [[1, 2]]
    assert generate_batch(model, [], 5) == []


def test_stop_ids_end_a_row_like_eos_and_config_equals_keywords():
    model = tiny_model()
    batch = prompts([5, 8, 6])
    free = generate_batch(model, batch, 30)
    stop = free[1][4]
    expected = [row[: row.index(stop)] if stop in row else row for row in free]
    config = GenerationConfig(max_new_tokens=30, stop_ids=(stop,))
    assert generate_batch(model, batch, config=config) == expected
    assert list(stream(model, batch[1], config=config)) == expected[1]
    assert generate_batch(model, batch, 30, eos_id=[stop]) == expected  # a list of end ids
    options = {"temperature": 1.0, "top_k": 50, "top_p": 0.95, "seed": 7}
    idx = torch.tensor(prompts([4, 4]))
    assert torch.equal(
        generate(model, idx, 30, **options),
        generate(model, idx, config=GenerationConfig(max_new_tokens=30, **options)),
    )
    # keywords beside a config override its fields
    assert generate_batch(model, batch, 3, config=config) == [row[:3] for row in expected]
