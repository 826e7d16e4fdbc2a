"""Evaluation records that duplicate a training record: leakage between splits.

A test record that nearly copies a training record turns its score into a memory test.
`find_leakage` looks up every test and validation record in an index of the training
split (`instructkit.data.dedup`'s rule: exact after normalisation, or every field within
the similarity threshold); `check_splits` does it for the split a run would use, with
the duplicate groups of the whole file, for `data inspect` and `finetune`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from instructkit.data.dedup import (
    DEFAULT_FIELDS,
    DEFAULT_THRESHOLD,
    DuplicateIndex,
    DuplicateReport,
    check_fields,
    find_duplicates,
    shown,
)


@dataclass(frozen=True)
class Leak:
    """Record `index` of evaluation split `split` duplicates training record `train_index`."""

    split: str
    index: int
    train_index: int
    kind: str
    similarity: float


def find_leakage(
    train: Sequence[dict],
    evaluation: dict[str, Sequence[dict]],
    fields: Sequence[str] = DEFAULT_FIELDS,
    threshold: float = DEFAULT_THRESHOLD,
) -> list[Leak]:
    """Evaluation records (e.g. {"test": ..., "val": ...}) that duplicate a training record."""
    check_fields(train, fields)
    index = DuplicateIndex(fields, threshold)
    for position, prepared in enumerate(index.prepare(train)):
        index.add(position, prepared)
    leaks = []
    for split, records in evaluation.items():
        check_fields(records, fields, split)
        for position, prepared in enumerate(index.prepare(records)):
            found = index.find(prepared)
            if found is not None:
                leaks.append(Leak(split, position, found[0], found[1], found[2]))
    return leaks


@dataclass
class SplitCheck:
    """Duplicates in a records file and leakage between the splits a run would use."""

    method: str
    """The split method, "auto" resolved."""
    splits: dict[str, list[dict]]
    """"train", "test", "val"."""
    duplicates: DuplicateReport
    leaks: list[Leak]

    def leak_count(self, split: str) -> int:
        return sum(leak.split == split for leak in self.leaks)


def check_splits(
    records: list[dict],
    method: str = "auto",
    seed: int = 0,
    source: str = "records",
    fields: Sequence[str] = DEFAULT_FIELDS,
    threshold: float = DEFAULT_THRESHOLD,
) -> SplitCheck:
    """Duplicate groups over all records, and test/val records duplicating a training record."""
    from instructkit.data.splits import resolve_split_method, split_records

    method = resolve_split_method(records, method)
    records = [comparable(record) for record in records]
    train, test, val = split_records(records, method, seed, source=source)
    leaks = find_leakage(train, {"test": test, "val": val}, fields, threshold)
    splits = {"train": train, "test": test, "val": val}
    return SplitCheck(method, splits, find_duplicates(records, fields, threshold), leaks)


def leakage_warning(
    train: list[dict], test: list[dict], val: list[dict], source: str
) -> str | None:
    """The one line `finetune` prints when its test or validation split repeats training
    records (a score on them measures memory), or None when none does."""
    evaluation = {"test": [comparable(r) for r in test], "val": [comparable(r) for r in val]}
    leaks = find_leakage([comparable(r) for r in train], evaluation)
    if not leaks:
        return None
    counts = Counter(leak.split for leak in leaks)
    return (
        f"Warning: {counts['test']} of {len(test)} test and {counts['val']} of {len(val)} "
        f"validation records nearly copy a training record; `instructkit data inspect "
        f"{source}` lists them"
    )


def comparable(record: dict) -> dict:
    """A conversation compared as an instruction record: its user turns are the instruction,
    its system turns the input, its assistant turns the output (its split kept)."""
    if "messages" not in record:
        return record
    turns = {"user": [], "system": [], "assistant": []}
    for message in record["messages"]:
        turns.setdefault(message["role"], []).append(message["content"])
    flat = {
        "instruction": "\n".join(turns["user"]),
        "input": "\n".join(turns["system"]),
        "output": "\n".join(turns["assistant"]),
    }
    return {**flat, **({"split": record["split"]} if "split" in record else {})}


def format_split_check(check: SplitCheck, records: Sequence[dict], examples: int = 3) -> str:
    """`data inspect`'s section: duplicate groups, then leakage per evaluation split."""
    from instructkit.data.dedup import format_duplicates

    records = [comparable(record) for record in records]

    evaluation = {name: check.splits[name] for name in ("test", "val")}
    lines = [
        "duplicates: " + format_duplicates(check.duplicates, records, examples),
        f"leakage ({check.method} split, into the training split):",
        *(
            "  " + line
            for line in format_leakage(
                check.leaks, check.splits["train"], evaluation, check.duplicates.fields, examples
            ).splitlines()
        ),
    ]
    return "\n".join(lines)


def format_leakage(
    leaks: Sequence[Leak],
    train: Sequence[dict],
    evaluation: dict[str, Sequence[dict]],
    fields: Sequence[str] = DEFAULT_FIELDS,
    examples: int = 3,
) -> str:
    """Per split: how many records duplicate a training record, and a few of them."""
    lines = []
    for split, records in evaluation.items():
        found = [leak for leak in leaks if leak.split == split]
        exact = sum(leak.kind == "exact" for leak in found)
        lines.append(
            f"{split}: {len(found)} of {len(records)} records duplicate a training record "
            f"({exact} exact, {len(found) - exact} near)"
        )
        for leak in found[:examples]:
            lines.append(
                f"  {split} #{leak.index} = train #{leak.train_index} "
                f"({leak.kind}, {leak.similarity:.2f}): {shown(records[leak.index], fields)}"
            )
    return "\n".join(lines)
