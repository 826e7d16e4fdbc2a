"""Duplicate and leakage detection: the contract on planted copies, against a brute-force
reference of the same rule, and `instructkit data dedup` end to end."""

from __future__ import annotations

import csv
import json
import random

import pytest
from rapidfuzz.distance import Levenshtein

from instructkit.cli import main
from instructkit.data import load_instructions
from instructkit.data.dedup import (
    NUM_PERM,
    DuplicateIndex,
    find_duplicates,
    normalize_text,
    token_hash,
)
from instructkit.data.leakage import check_splits, find_leakage, format_leakage

BASE = [
    {"instruction": "Name three primary colors.", "input": "", "output": "Red, yellow and blue."},
    {
        "instruction": "Rewrite the sentence in the passive voice.",
        "input": "The cat chased the mouse.",
        "output": "The mouse was chased by the cat.",
    },
    {
        "instruction": "Convert the temperature to Fahrenheit.",
        "input": "25 degrees Celsius",
        "output": "25 degrees Celsius is 77 degrees Fahrenheit.",
    },
    {
        "instruction": "Summarize the paragraph in one sentence.",
        "input": "Photosynthesis lets plants turn sunlight, water and carbon dioxide into "
        "sugar and oxygen; it happens in the chloroplasts of leaf cells.",
        "output": "Plants use sunlight in their chloroplasts to make sugar and oxygen from "
        "water and carbon dioxide.",
    },
]


def planted() -> tuple[list[dict], set[int]]:
    """BASE, then copies that must go and near-but-different records that must stay."""
    records = [dict(r, id=i) for i, r in enumerate(BASE)]
    copies = [
        dict(BASE[0], instruction="name three PRIMARY colors", id="case"),
        dict(BASE[1], output="The mouse  was chased by the cat", id="spacing+punctuation"),
        dict(BASE[0], instruction="Name three primry colors.", id="typo"),
        dict(BASE[3], output=BASE[3]["output"].replace("make", "produce"), id="word"),
        dict(BASE[1], id="exact"),
    ]
    different = [
        dict(BASE[1], input="The dog chased the ball.", output="The ball was chased by the dog."),
        dict(BASE[2], input="30 degrees Celsius", output="30 degrees Celsius is 86 degrees."),
        dict(BASE[2], input="25 degrees Celsius", output="25 degrees Celsius is 78 degrees."),
        dict(BASE[0], output="Red, green and blue are the additive primaries."),
        {"instruction": "What is 5 + 3?", "input": "", "output": "8"},
        {"instruction": "What is 5 * 3?", "input": "", "output": "8"},
    ]
    removed = set(range(len(records), len(records) + len(copies)))
    return records + copies + different, removed


def rule(a: dict, b: dict, fields, threshold: float) -> bool:
    """The documented rule, written out independently of the index."""
    import re

    numbers = re.compile(r"\d+|[-+*/×÷^=<>%](?=\s*\d)")
    for name in fields:
        x, y = normalize_text(a[name]), normalize_text(b[name])
        if numbers.findall(a[name]) != numbers.findall(b[name]):
            return False
        if x != y and Levenshtein.normalized_similarity(x, y) < threshold:
            return False
    return True


def brute_force(records, fields=("instruction", "input", "output"), threshold=0.9) -> set[int]:
    kept, removed = [], set()
    for i, record in enumerate(records):
        if any(rule(record, records[k], fields, threshold) for k in kept):
            removed.add(i)
        else:
            kept.append(i)
    return removed


def test_normalize_text():
    assert normalize_text("  Hello,   WORLD!\n") == "hello world"
    assert normalize_text("Don't — stop…") == "dont stop"
    assert normalize_text("Ｆｕｌｌ width") == "full width"
    assert normalize_text("5 + 3 = 8") == "5 + 3 = 8"  # symbols are not punctuation


def test_planted_copies_go_and_different_records_stay():
    records, expected = planted()
    report = find_duplicates(records)
    assert report.removed == expected
    assert report.removed == brute_force(records)
    by_index = {m.index: m for m in report.matches}
    assert by_index[4].of == 0 and by_index[4].kind == "exact"
    assert by_index[6].of == 0 and by_index[6].kind == "near" and 0.9 <= by_index[6].similarity < 1
    assert by_index[8].of == 1 and by_index[8].kind == "exact"
    assert report.kept == [i for i in range(len(records)) if i not in expected]
    assert sorted(report.groups) == [0, 1, 3]


def test_threshold_and_fields():
    records, _ = planted()
    exact_only = find_duplicates(records, threshold=1.0)
    assert {m.index for m in exact_only.matches} == {4, 5, 8}
    by_instruction = find_duplicates(records, fields=["instruction"])
    # records sharing an instruction are duplicates when only the instruction is compared
    assert {9, 10, 11, 12} <= by_instruction.removed
    assert by_instruction.removed == brute_force(records, ["instruction"])


def test_random_corpus_matches_brute_force():
    rng = random.Random(3)
    words = ["".join(rng.choices("abcdefghijklmnop", k=rng.randint(2, 7))) for _ in range(300)]

    def sentence(n):
        return " ".join(rng.choices(words, k=n))

    records, originals = [], []
    for _ in range(400):
        if records and rng.random() < 0.3:
            # One edit from an original: one word apart, or a space typed over or in.
            copy = dict(rng.choice(originals))
            name = rng.choice(["instruction", "output"])
            text = copy[name]
            i = rng.randrange(len(text))
            copy[name] = text[:i] + rng.choice("xyz ") + text[i + 1 :]
            records.append(copy)
        else:
            originals.append(
                {
                    "instruction": sentence(rng.randint(2, 9)),
                    "input": "",
                    "output": sentence(rng.randint(1, 30)),
                }
            )
            records.append(originals[-1])
    assert find_duplicates(records).removed == brute_force(records)


def test_signature_is_datasketchs_minhash():
    from datasketch import MinHash

    index = DuplicateIndex()
    prepared = index.prepare(BASE)
    signatures = index._signatures(prepared)
    for item, row in zip(prepared, signatures, strict=True):
        reference = MinHash(num_perm=NUM_PERM, hashfunc=token_hash)
        reference.update_batch(item.tokens.tolist())
        assert (reference.hashvalues == row).all()


def test_incremental_index_add_find_remove():
    index = DuplicateIndex(["instruction"])
    index.add("a", {"instruction": "Write a haiku about the autumn sea."})
    assert index.find({"instruction": "write a haiku about the autumn sea"})[:2] == ("a", "exact")
    assert index.find({"instruction": "Write a haiku about the autum sea."})[:2] == ("a", "near")
    assert index.find({"instruction": "Write a poem about the spring rain."}) is None
    index.remove("a")
    assert index.find({"instruction": "Write a haiku about the autum sea."}) is None
    assert len(index) == 0


def test_leakage_between_splits():
    records, _ = planted()
    train = records[:4]
    test = [records[6], records[9], records[8]]  # typo copy, different record, exact copy
    val = [records[13]]
    leaks = find_leakage(train, {"test": test, "val": val})
    assert [(leak.split, leak.index, leak.train_index, leak.kind) for leak in leaks] == [
        ("test", 0, 0, "near"),
        ("test", 2, 1, "exact"),
    ]
    text = format_leakage(leaks, train, {"test": test, "val": val})
    assert "test: 2 of 3 records duplicate a training record (1 exact, 1 near)" in text
    assert "val: 0 of 1 records" in text


def test_check_splits_uses_the_runs_split_and_data_inspect_reports_it(tmp_path, capsys):
    records, _ = planted()
    splits = ["train"] * 4 + ["test", "val", "test"] + ["train"] * (len(records) - 7)
    records = [dict(r, split=s) for r, s in zip(records, splits, strict=True)]
    check = check_splits(records)
    assert check.method == "field"
    assert (check.leak_count("test"), check.leak_count("val")) == (2, 1)
    assert check.duplicates.removed == planted()[1]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    assert main(["data", "inspect", str(path), "--tokenizer", "no-such-tokenizer.json"]) == 2
    printed = capsys.readouterr().out
    assert "duplicates: 5 duplicates in 3 groups" in printed
    assert "leakage (field split, into the training split):" in printed
    assert "test: 2 of 2 records duplicate a training record (1 exact, 1 near)" in printed
    assert "val: 1 of 1 records duplicate a training record (1 exact, 0 near)" in printed


def test_cli_dedup_json_keeps_extra_keys_and_first_of_group(tmp_path, capsys):
    records, expected = planted()
    source = tmp_path / "data.json"
    source.write_text(json.dumps(records))
    out = tmp_path / "clean.json"
    assert main(["data", "dedup", str(source), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "5 duplicates in 3 groups" in printed and "(3 exact, 2 near" in printed
    assert f"wrote {len(records) - 5} of {len(records)} records" in printed
    clean = json.loads(out.read_text())
    assert [r.get("id") for r in clean] == [
        r.get("id") for i, r in enumerate(records) if i not in expected
    ]
    assert clean[0] == records[0]  # extra key `id` kept, first of its group


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_cli_dedup_writes_the_inputs_format(tmp_path, suffix):
    records, expected = planted()
    source = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        with source.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, ["instruction", "input", "output", "id"])
            writer.writeheader()
            writer.writerows(records)
    else:
        source.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "clean.out"  # no suffix of its own: the input's format
    assert main(["data", "dedup", str(source), "--out", str(out)]) == 0
    if suffix == ".csv":
        rows = list(csv.DictReader(out.open(newline="")))
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(records) - len(expected)
    kept = tmp_path / f"kept{suffix}"
    kept.write_text(out.read_text())
    assert len(load_instructions(kept)) == len(rows)


def test_cli_dedup_refuses_bad_input_with_exit_2(tmp_path, capsys):
    source = tmp_path / "data.json"
    source.write_text(json.dumps(BASE))
    before = source.read_text()
    assert main(["data", "dedup", str(source), "--out", str(source)]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert source.read_text() == before
    assert main(["data", "dedup", str(source), "--out", str(tmp_path / "o.json"),
                 "--threshold", "0"]) == 2  # fmt: skip
    assert "--threshold must be above 0" in capsys.readouterr().err
    assert main(["data", "dedup", str(source), "--out", str(tmp_path / "o.json"),
                 "--fields", "instruction,prompt"]) == 2  # fmt: skip
    assert "record index 0 has no text field 'prompt'" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "x"}]')
    assert main(["data", "dedup", str(broken), "--out", str(tmp_path / "o.json")]) == 2
    assert "field 'output': missing" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()
