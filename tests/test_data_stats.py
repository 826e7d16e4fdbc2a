"""The statistics `data inspect` prints, checked against hand-computed values."""

from __future__ import annotations

from instructkit.data import Example, InstructionDataset
from instructkit.data.stats import (
    LengthSummary,
    label_targets,
    record_stats,
    summarize,
    token_stats,
    truncation_limit,
)


def test_summarize_uses_the_nearest_rank_p95():
    assert summarize(list(range(20, 0, -1))) == LengthSummary(1, 10.5, 19, 20)
    assert summarize([7]) == LengthSummary(7, 7.0, 7, 7)
    assert str(summarize([1, 2])) == "min 1, mean 1.5, p95 2, max 2"


def test_truncation_limit_is_capped_at_the_context_as_in_training():
    assert truncation_limit(None, 30) == 30
    assert truncation_limit(1024, 30) == 30
    assert truncation_limit(60, 1024) == 60


def test_record_stats_reads_each_records_split_field():
    records = [
        {"instruction": "abc", "input": "", "output": "xy", "split": "train", "id": 1},
        {"instruction": "a", "input": "four", "output": "xyz", "split": "train"},
        {"instruction": "ab", "input": "", "output": "x", "split": "val"},
    ]
    stats = record_stats(records)
    assert (stats.records, stats.with_input, stats.extra_keys) == (3, 1, ["id", "split"])
    assert (stats.split_method, stats.split_sizes) == ("field", (2, 0, 1))
    assert stats.characters["instruction"] == LengthSummary(1, 2.0, 3, 3)
    assert stats.characters["input"] == LengthSummary(0, 4 / 3, 4, 4)


def test_label_targets_marks_prompt_targets():
    rows = label_targets(Example([10, 11, 12, 13], prompt_length=2), eos_id=99, limit=16)
    assert [(r.input_id, r.target_id, r.label) for r in rows] == [
        (10, 11, "prompt"),
        (11, 12, "train"),
        (12, 13, "train"),
        (13, 99, "train"),
    ]


def test_token_stats_match_the_examples(example_records, small_tokenizer):
    dataset = InstructionDataset(example_records, small_tokenizer)
    lengths = [len(example) for example in dataset.examples]
    stats = token_stats(dataset, context_length=70, limit=60, batch_size=64, seed=0)
    assert stats.prompt_lengths == [e.prompt_length for e in dataset.examples]
    assert stats.total_lengths == [n + 1 for n in lengths]
    assert stats.over_context == sum(n + 1 > 70 for n in lengths)
    assert stats.truncated == sum(n > 60 for n in lengths)
    assert stats.masked_empty == sum(
        n > 60 and e.prompt_length >= 60 for n, e in zip(lengths, dataset.examples)
    )
    assert stats.prompts_filling_context == [
        i for i, e in enumerate(dataset.examples) if e.prompt_length >= 70
    ]
    # one random batch of all 20 examples: every row padded to the longest kept example
    random = stats.batching[0]
    kept = [min(n, 60) for n in lengths]
    assert (random.name, random.batches) == ("random", 1)
    assert abs(random.padding_efficiency - sum(kept) / (len(kept) * max(kept))) < 1e-12
    assert [mode.name for mode in stats.batching] == ["random", "length-grouped", "packed"]
