"""GPTModel: shapes, GPT-2 sizes, packed-sequence attention, the loss helper, the KV cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from instructkit.errors import ModelError
from instructkit.model import PRESETS, GPTConfig, GPTModel

VOCAB = 97


def tiny_model(seed: int = 0, **overrides) -> GPTModel:
    torch.manual_seed(seed)
    model = GPTModel(GPTConfig.preset("tiny", vocab_size=VOCAB, **overrides))
    return model.eval()


def random_ids(lengths: list[int], seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=generator) for n in lengths]


def test_config_validates():
    with pytest.raises(ModelError, match="not divisible"):
        GPTConfig(vocab_size=10, context_length=8, emb_dim=10, n_heads=3, n_layers=1)
    with pytest.raises(ModelError, match="n_layers"):
        GPTConfig(vocab_size=10, context_length=8, emb_dim=8, n_heads=2, n_layers=0)
    with pytest.raises(ModelError, match="drop_rate"):
        GPTConfig(vocab_size=10, context_length=8, emb_dim=8, n_heads=2, n_layers=1, drop_rate=1.5)
    with pytest.raises(ModelError, match="unknown model preset"):
        GPTConfig.preset("gpt5")
    with pytest.raises(ModelError, match="unknown model config fields: colour"):
        GPTConfig.preset("tiny", colour="red")


def test_preset_overrides_do_not_touch_the_preset():
    config = GPTConfig.preset("tiny", vocab_size=123, drop_rate=0.1)
    assert (config.vocab_size, config.drop_rate, config.emb_dim) == (123, 0.1, 64)
    assert PRESETS["tiny"].vocab_size == 50257
    assert GPTConfig.from_dict(config.to_dict()) == config


def test_gpt2_sizes_match_the_published_parameter_counts():
    expected = {"gpt2-small": 124_439_808, "gpt2-medium": 354_823_168}
    for name, count in expected.items():
        with torch.device("meta"):
            model = GPTModel(GPTConfig.preset(name))
        assert model.num_parameters() == count


def test_forward_shape_and_tied_head():
    model = tiny_model()
    logits = model(torch.zeros(3, 11, dtype=torch.long))
    assert logits.shape == (3, 11, VOCAB)
    assert model.lm_head.weight is model.wte.weight
    untied = tiny_model(tie_embeddings=False)
    assert untied.lm_head.weight is not untied.wte.weight


def test_forward_is_causal():
    model = tiny_model()
    ids = random_ids([12])[0][None]
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % VOCAB
    torch.testing.assert_close(model(ids)[:, :8], model(changed)[:, :8])


def test_context_length_overflow_is_a_clear_error():
    model = tiny_model()
    with pytest.raises(ModelError, match="exceeds the model's context length 128"):
        model(torch.zeros(1, 129, dtype=torch.long))


def shifted_targets(ids: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """Targets of the next token, the prompt part masked as the collator does."""
    targets = torch.full_like(ids, -100)
    targets[:-1] = ids[1:]
    targets[: prompt_length - 1] = -100
    return targets


def test_packed_batch_equals_padded_batch():
    model = tiny_model()
    examples = random_ids([5, 9, 3, 7])
    prompt_lengths = [2, 4, 1, 3]
    T = 9
    padded = torch.zeros(4, T, dtype=torch.long)
    padded_targets = torch.full((4, T), -100)
    for row, (ids, prompt) in enumerate(zip(examples, prompt_lengths)):
        padded[row, : len(ids)] = ids
        padded_targets[row, : len(ids)] = shifted_targets(ids, prompt)

    # Two packed rows: [ex0 ex1 pad...] and [ex2 ex3 pad...], width 16.
    rows = [[0, 1], [2, 3]]
    width = 16
    packed = torch.zeros(2, width, dtype=torch.long)
    packed_targets = torch.full((2, width), -100)
    positions = torch.zeros(2, width, dtype=torch.long)
    segments = torch.zeros(2, width, dtype=torch.long)
    spans = {}
    for row, members in enumerate(rows):
        start = 0
        for segment, index in enumerate(members, start=1):
            ids = examples[index]
            end = start + len(ids)
            packed[row, start:end] = ids
            packed_targets[row, start:end] = shifted_targets(ids, prompt_lengths[index])
            positions[row, start:end] = torch.arange(len(ids))
            segments[row, start:end] = segment
            spans[index] = (row, start, end)
            start = end

    padded_logits = model(padded)
    packed_logits = model(packed, position_ids=positions, segment_ids=segments)
    assert not packed_logits.isnan().any()
    for index, ids in enumerate(examples):
        row, start, end = spans[index]
        torch.testing.assert_close(
            packed_logits[row, start:end], padded_logits[index, : len(ids)], atol=1e-5, rtol=1e-5
        )
    for reduction in ("mean", "sum"):
        padded_loss = model.loss(padded, padded_targets, reduction=reduction)
        packed_loss = model.loss(
            packed,
            packed_targets,
            position_ids=positions,
            segment_ids=segments,
            reduction=reduction,
        )
        torch.testing.assert_close(packed_loss, padded_loss, atol=1e-5, rtol=1e-5)


def test_loss_helper_equals_full_cross_entropy_and_its_gradient():
    model = tiny_model()
    ids = torch.stack(random_ids([10, 10, 10]))
    targets = torch.roll(ids, -1, dims=1)
    targets[:, :4] = -100
    targets[1, 7:] = -100
    for reduction in ("mean", "sum"):
        model.zero_grad()
        logits = model(ids)
        full = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction=reduction)
        full.backward()
        full_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        helper = model.loss(ids, targets, reduction=reduction)
        helper.backward()
        torch.testing.assert_close(helper, full)
        for expected, parameter in zip(full_grads, model.parameters()):
            torch.testing.assert_close(parameter.grad, expected, atol=1e-6, rtol=1e-4)


def test_loss_without_targets_is_zero_and_differentiable():
    model = tiny_model()
    ids = torch.zeros(2, 5, dtype=torch.long)
    loss = model.loss(ids, torch.full((2, 5), -100))
    loss.backward()
    assert loss.item() == 0.0
    with pytest.raises(ValueError, match="reduction"):
        model.loss(ids, ids, reduction="none")


def test_kv_cache_in_chunks_equals_full_forward():
    model = tiny_model()
    ids = torch.stack(random_ids([14, 14]))
    full = model(ids)
    cache = model.new_kv_cache(batch_size=2, max_length=20)
    pieces = [model(ids[:, :5], kv_cache=cache)]
    for t in range(5, 9):
        pieces.append(model(ids[:, t : t + 1], kv_cache=cache))
    pieces.append(model(ids[:, 9:], kv_cache=cache))
    assert cache.length == 14
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_with_left_padding_equals_unpadded_rows():
    model = tiny_model()
    short, long = random_ids([4, 7])
    ids = torch.zeros(2, 7, dtype=torch.long)
    ids[0, 3:] = short
    ids[1] = long
    segments = torch.ones(2, 7, dtype=torch.long)
    segments[0, :3] = 0
    positions = (segments.cumsum(1) - 1).clamp(min=0)
    cache = model.new_kv_cache(batch_size=2, max_length=10)
    prefill = model(ids, position_ids=positions, segment_ids=segments, kv_cache=cache)
    next_ids = torch.tensor([[5], [6]])
    step = model(next_ids, position_ids=positions[:, -1:] + 1, kv_cache=cache)
    for row, (tokens, nxt) in enumerate(zip([short, long], next_ids)):
        alone = model(torch.cat([tokens, nxt])[None])
        torch.testing.assert_close(
            prefill[row, -len(tokens) :], alone[0, :-1], atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(step[row, 0], alone[0, -1], atol=1e-5, rtol=1e-5)


def test_dropout_only_in_training():
    model = tiny_model(drop_rate=0.5)
    ids = torch.stack(random_ids([8]))
    torch.testing.assert_close(model(ids), model(ids))
    model.train()
    assert not torch.allclose(model(ids), model(ids))
