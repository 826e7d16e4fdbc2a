"""Tests for batching: the book's collate tensors, prompt masking, truncation and packing."""

from __future__ import annotations

import pytest
import torch
from book_code import book_collate
from hypothesis import given, settings
from hypothesis import strategies as st

from instructkit.data import Batch, Example, InstructionCollator, custom_collate_fn
from instructkit.data.collate import count_untrained

PAD = 50256
IGNORE = -100


def per_item_collate(batch, pad_token_id=PAD, ignore_index=IGNORE, allowed_max_length=None):
    """The same rules written plainly, one example at a time, masking by position."""
    width = max(len(item) for item in batch)
    inputs_rows, target_rows = [], []
    for item in batch:
        inputs = item + [pad_token_id] * (width - len(item))
        targets = item[1:] + [pad_token_id] + [ignore_index] * (width - len(item))
        inputs_rows.append(inputs[:allowed_max_length])
        target_rows.append(targets[:allowed_max_length])
    return torch.tensor(inputs_rows), torch.tensor(target_rows)


# --- custom_collate_fn: the book's tensors -------------------------------------------


def test_book_example_from_section_7_3():
    inputs_1, inputs_2, inputs_3 = [0, 1, 2, 3, 4], [5, 6], [7, 8, 9]
    inputs, targets = custom_collate_fn([inputs_1, inputs_2, inputs_3])
    assert torch.equal(
        inputs, torch.tensor([[0, 1, 2, 3, 4], [5, 6, PAD, PAD, PAD], [7, 8, 9, PAD, PAD]])
    )
    assert torch.equal(
        targets,
        torch.tensor(
            [[1, 2, 3, 4, PAD], [6, PAD, IGNORE, IGNORE, IGNORE], [8, 9, PAD, IGNORE, IGNORE]]
        ),
    )
    assert inputs.dtype == targets.dtype == torch.long
    assert inputs.is_contiguous()


def test_first_padding_target_is_kept_then_truncation_drops_columns():
    inputs, targets = custom_collate_fn([[1, 2, 3, 4], [5]], pad_token_id=0, allowed_max_length=2)
    assert torch.equal(inputs, torch.tensor([[1, 2], [5, 0]]))
    assert torch.equal(targets, torch.tensor([[2, 3], [0, IGNORE]]))


def test_custom_ignore_index_and_pad():
    _, targets = custom_collate_fn([[1], [2, 3, 4]], pad_token_id=9, ignore_index=-1)
    assert torch.equal(targets, torch.tensor([[9, -1, -1], [3, 4, 9]]))


def test_end_of_text_inside_text_stays_a_target():
    """The one documented difference from the book: mask by position, not by value."""
    batch = [[1, PAD, 2], [3]]
    _, targets = custom_collate_fn(batch)
    assert targets.tolist() == [[PAD, 2, PAD], [PAD, IGNORE, IGNORE]]
    _, book_targets = book_collate(batch)
    assert book_targets.tolist() == [[PAD, 2, IGNORE], [PAD, IGNORE, IGNORE]]


token_lists = st.lists(
    st.lists(st.integers(0, PAD), min_size=1, max_size=24), min_size=1, max_size=8
)
limits = st.one_of(st.none(), st.integers(1, 30))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(batch=token_lists, allowed_max_length=limits)
def test_vectorized_collate_equals_per_item_reference(batch, allowed_max_length):
    got = custom_collate_fn(batch, allowed_max_length=allowed_max_length)
    expected = per_item_collate(batch, allowed_max_length=allowed_max_length)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    batch=st.lists(
        st.lists(st.integers(0, PAD - 1), min_size=1, max_size=24), min_size=1, max_size=8
    ),
    allowed_max_length=limits,
)
def test_equals_the_books_code_when_text_has_no_end_of_text(batch, allowed_max_length):
    got = custom_collate_fn(batch, allowed_max_length=allowed_max_length)
    expected = book_collate(batch, allowed_max_length=allowed_max_length)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_input_lists_are_not_modified():
    batch = [[1, 2], [3]]
    custom_collate_fn(batch)
    InstructionCollator(PAD, pack=True)(batch)
    assert batch == [[1, 2], [3]]


# --- InstructionCollator -------------------------------------------------------------


def test_collator_plain_batch_equals_custom_collate_fn():
    batch = [[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]]
    result = InstructionCollator(PAD)(batch)
    inputs, targets = custom_collate_fn(batch)
    assert isinstance(result, Batch)
    assert torch.equal(result.input_ids, inputs) and torch.equal(result.targets, targets)
    assert result.position_ids is None and result.segment_ids is None
    assert (result.num_records, result.num_truncated, result.num_real_tokens) == (3, 0, 10)
    assert result.num_target_tokens == 10
    assert result.padding_efficiency == pytest.approx(10 / 15)
    unpacked_inputs, unpacked_targets = result
    assert unpacked_inputs is result.input_ids and unpacked_targets is result.targets


def test_mask_prompt_ignores_targets_that_predict_prompt_tokens():
    # prompt = first 3 tokens; targets predicting tokens 1 and 2 are ignored.
    result = InstructionCollator(PAD, mask_prompt=True)(
        [Example([10, 11, 12, 13, 14], 3), Example([20, 21], 1)]
    )
    assert result.targets.tolist() == [
        [IGNORE, IGNORE, 13, 14, PAD],
        [21, PAD, IGNORE, IGNORE, IGNORE],
    ]
    assert result.num_target_tokens == 5


def test_truncation_keeps_the_end_of_text_target_and_counts():
    result = InstructionCollator(PAD, allowed_max_length=3)(
        [Example([1, 2, 3, 4, 5], 1), Example([6, 7], 1), Example([8, 9, 10], 1)]
    )
    assert result.input_ids.tolist() == [[1, 2, 3], [6, 7, PAD], [8, 9, 10]]
    assert result.targets.tolist() == [[2, 3, PAD], [7, PAD, IGNORE], [9, 10, PAD]]
    assert result.num_truncated == 1
    # The book's cut loses it: its last target is a text token.
    assert custom_collate_fn([[1, 2, 3, 4, 5]], allowed_max_length=3)[1].tolist() == [[2, 3, 4]]


def test_truncation_into_the_prompt_trains_nothing_with_mask_prompt():
    collator = InstructionCollator(PAD, allowed_max_length=3, mask_prompt=True)
    result = collator([Example([1, 2, 3, 4, 5], 3), Example([6, 7, 8, 9], 2)])
    assert result.targets.tolist() == [[IGNORE, IGNORE, IGNORE], [IGNORE, 8, PAD]]
    assert result.num_truncated == 2


def test_pad_to_multiple_of():
    result = InstructionCollator(PAD, pad_to_multiple_of=4)([[1, 2, 3, 4, 5], [6]])
    assert result.input_ids.shape == (2, 8)
    assert result.targets[0].tolist() == [2, 3, 4, 5, PAD, IGNORE, IGNORE, IGNORE]
    assert result.num_real_tokens == 6


def test_packing_rows_positions_segments_and_boundaries():
    collator = InstructionCollator(PAD, allowed_max_length=6, mask_prompt=True, pack=True)
    result = collator(
        [Example([1, 2, 3, 4, 5], 2), Example([6, 7], 1), Example([8, 9, 10], 2), Example([11], 1)]
    )
    # First-fit-decreasing: [1..5] + [11] fill row 0; [8,9,10] + [6,7] go to row 1.
    assert result.input_ids.tolist() == [[1, 2, 3, 4, 5, 11], [8, 9, 10, 6, 7, PAD]]
    assert result.targets.tolist() == [
        [IGNORE, 3, 4, 5, PAD, PAD],
        [IGNORE, 10, PAD, 7, PAD, IGNORE],
    ]
    assert result.position_ids.tolist() == [[0, 1, 2, 3, 4, 0], [0, 1, 2, 0, 1, 0]]
    assert result.segment_ids.tolist() == [[1, 1, 1, 1, 1, 2], [1, 1, 1, 2, 2, 0]]
    assert (result.num_records, result.num_real_tokens) == (4, 11)


def test_packing_without_limit_uses_the_longest_example_and_truncates_nothing():
    result = InstructionCollator(PAD, pack=True)([[1, 2, 3], [4], [5, 6], [7]])
    assert result.input_ids.tolist() == [[1, 2, 3], [5, 6, 4], [7, PAD, PAD]]
    assert result.segment_ids.tolist() == [[1, 1, 1], [1, 1, 2], [1, 0, 0]]
    assert result.num_truncated == 0


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    examples=st.lists(
        st.lists(st.integers(0, 1000), min_size=1, max_size=12).flatmap(
            lambda ids: st.tuples(st.just(ids), st.integers(0, len(ids)))
        ),
        min_size=1,
        max_size=8,
    ),
    limit=st.one_of(st.none(), st.integers(12, 20)),
    mask_prompt=st.booleans(),
)
def test_each_packed_segment_equals_the_example_collated_alone(examples, limit, mask_prompt):
    examples = [Example(ids, prompt) for ids, prompt in examples]
    packed = InstructionCollator(PAD, allowed_max_length=limit, mask_prompt=mask_prompt, pack=True)(
        examples
    )
    alone = InstructionCollator(PAD, allowed_max_length=limit, mask_prompt=mask_prompt)
    pieces = []
    for row in range(packed.input_ids.shape[0]):
        for segment in packed.segment_ids[row].unique().tolist():
            if segment == 0:
                continue
            where = packed.segment_ids[row] == segment
            assert packed.position_ids[row][where].tolist() == list(range(int(where.sum())))
            pieces.append(
                (packed.input_ids[row][where].tolist(), packed.targets[row][where].tolist())
            )
    expected = []
    for example in examples:
        single = alone([example])
        expected.append((single.input_ids[0].tolist(), single.targets[0].tolist()))
    assert sorted(pieces) == sorted(expected)
    padding = packed.segment_ids == 0
    assert packed.input_ids[padding].eq(PAD).all() and packed.targets[padding].eq(IGNORE).all()
    assert packed.num_real_tokens == int((~padding).sum())
    assert packed.num_records == len(examples)


def test_batch_to_and_pin_memory_keep_metadata(monkeypatch):
    result = InstructionCollator(PAD, pack=True)([[1, 2], [3]])
    moved = result.to("cpu")
    assert torch.equal(moved.position_ids, result.position_ids)
    assert (moved.num_records, moved.num_real_tokens) == (2, 3)

    # Pinning needs an accelerator; record which tensors a DataLoader would have pinned.
    pinned = []

    def pin(tensor):
        pinned.append(tensor)
        return tensor.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    kept = result.pin_memory()
    assert isinstance(kept, Batch)
    tensors = [result.input_ids, result.targets, result.position_ids, result.segment_ids]
    assert len(pinned) == 4 and all(a is b for a, b in zip(pinned, tensors))
    for name in ("input_ids", "targets", "position_ids", "segment_ids"):
        assert torch.equal(getattr(kept, name), getattr(result, name)), name
    assert (kept.num_records, kept.num_truncated, kept.num_real_tokens) == (2, 0, 3)


def test_empty_examples_are_refused():
    with pytest.raises(ValueError, match="at least one token"):
        InstructionCollator(PAD)([[1], []])


# --- per-token loss masks (conversations) ----------------------------------------------

F, T = False, True


def test_loss_mask_trains_exactly_the_marked_tokens_and_never_the_end_of_text():
    # Target at position j predicts token j+1 and is trained iff the mask marks token j+1;
    # the end-of-text target after the last token is never trained.
    example = Example([10, 11, 12, 13, 14], 2, (F, F, T, T, F))
    result = InstructionCollator(PAD)([example, Example([20, 21], 0)])
    assert result.targets.tolist() == [
        [IGNORE, 12, 13, IGNORE, IGNORE],
        [21, PAD, IGNORE, IGNORE, IGNORE],
    ]
    assert (result.num_target_tokens, result.num_untrained) == (4, 0)


def test_loss_mask_wins_over_mask_prompt_in_a_mixed_batch():
    collator = InstructionCollator(PAD, mask_prompt=True)
    result = collator([Example([10, 11, 12, 13], 3, (F, T, F, T)), Example([20, 21, 22], 2)])
    assert result.targets.tolist() == [[11, IGNORE, 13, IGNORE], [IGNORE, 22, PAD, IGNORE]]


def test_truncation_counts_examples_left_without_a_trained_token():
    examples = [
        Example([1, 2, 3, 4, 5], 3, (F, F, F, T, T)),  # cut to 3: answer gone
        Example([6, 7, 8, 9], 1, (F, T, T, T)),  # cut to 3: 7 and 8 still trained
        Example([1, 2, 3, 4, 5], 3),  # mask_prompt: answer gone too
    ]
    collator = InstructionCollator(PAD, allowed_max_length=3, mask_prompt=True)
    result = collator(examples)
    assert result.targets.tolist() == [
        [IGNORE, IGNORE, IGNORE],
        [7, 8, IGNORE],
        [IGNORE, IGNORE, IGNORE],
    ]
    assert (result.num_truncated, result.num_untrained) == (3, 2)
    assert count_untrained(examples, 3, mask_prompt=True) == 2
    assert count_untrained(examples, 4, mask_prompt=True) == 0
    assert count_untrained(examples, None) == 0


def test_packed_conversations_keep_their_masks_and_boundaries():
    collator = InstructionCollator(PAD, allowed_max_length=6, pack=True)
    result = collator([Example([1, 2, 3, 4], 2, (F, F, T, T)), Example([5, 6], 1, (F, T))])
    assert result.input_ids.tolist() == [[1, 2, 3, 4, 5, 6]]
    assert result.targets.tolist() == [[IGNORE, 3, 4, IGNORE, 6, IGNORE]]
    assert result.segment_ids.tolist() == [[1, 1, 1, 1, 2, 2]]
    assert result.position_ids.tolist() == [[0, 1, 2, 3, 0, 1]]


@settings(max_examples=50, deadline=None, derandomize=True)
@given(
    examples=st.lists(
        st.lists(st.tuples(st.integers(0, 1000), st.booleans()), min_size=1, max_size=12),
        min_size=1,
        max_size=6,
    ),
    limit=st.one_of(st.none(), st.integers(2, 20)),
)
def test_packed_masked_segments_equal_each_example_alone(examples, limit):
    examples = [Example([i for i, _ in pairs], 0, tuple(m for _, m in pairs)) for pairs in examples]
    packed = InstructionCollator(PAD, allowed_max_length=limit, pack=True)(examples)
    alone = InstructionCollator(PAD, allowed_max_length=limit)
    pieces = []
    for row in range(packed.input_ids.shape[0]):
        for segment in packed.segment_ids[row].unique().tolist():
            if segment:
                where = packed.segment_ids[row] == segment
                pieces.append(
                    (packed.input_ids[row][where].tolist(), packed.targets[row][where].tolist())
                )
    expected = []
    for example in examples:
        single = alone([example])
        expected.append((single.input_ids[0].tolist(), single.targets[0].tolist()))
        kept = len(example) if limit is None else min(len(example), limit)
        trained = [t for t, m in zip(example.input_ids[1:kept], example.loss_mask[1:kept]) if m]
        assert [t for t in single.targets[0].tolist() if t != IGNORE] == trained
    assert sorted(pieces) == sorted(expected)
    assert packed.num_untrained == count_untrained(examples, limit)
