"""End-to-end tests for `instructkit data inspect` and `instructkit data builtin`."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import tiktoken

from instructkit import cli
from instructkit.data import InstructionDataset, format_input, load_instructions
from instructkit.data.builtin import write_builtin


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["data", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def bad_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps(
            [
                {"instruction": "fine", "output": "ok"},
                {"instruction": "", "output": "x"},
                {"instruction": "y", "input": 3, "output": None},
                "not a record",
            ]
        )
    )
    return path


def test_invalid_file_exits_2_with_one_line_per_problem(capsys, bad_file):
    code, out, err = run(capsys, "inspect", bad_file)
    assert code == 2
    assert out == ""
    assert err.splitlines() == [
        (
            f"error: {bad_file}: record index 1, field 'instruction': is empty; "
            "every record needs a non-empty instruction"
        ),
        f"error: {bad_file}: record index 2, field 'input': is a number, expected a string",
        (
            f"error: {bad_file}: record index 2, field 'output': is null; "
            "every record needs a non-empty output"
        ),
        (
            f"error: {bad_file}: record index 3: is a string, expected an object with "
            "instruction, input, output"
        ),
    ]


def test_many_problems_show_the_first_20_then_a_count(capsys, tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text('{"instruction": "a"}\n' * 25)
    code, _, err = run(capsys, "inspect", path)
    lines = err.splitlines()
    assert code == 2 and len(lines) == 21
    assert lines[-1] == "error: ... and 5 more problems"


def test_process_exit_code_and_no_traceback(bad_file):
    result = subprocess.run(
        [sys.executable, "-m", "instructkit", "data", "inspect", str(bad_file)],
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 4


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--fields", "answer=completion"], "error: --fields: unknown field 'answer'"),
        (["--style", "nope"], "error: unknown prompt style 'nope'"),
        (["--batch-size", "0"], "error: --batch-size must be at least 1, got 0"),
    ],
)
def test_bad_options_exit_2(capsys, example_records_path, option, message):
    code, _, err = run(capsys, "inspect", example_records_path, *option)
    assert code == 2 and err.startswith(message)


def test_report_with_a_local_tokenizer(
    capsys, example_records_path, example_records, small_tokenizer, small_tokenizer_dir
):
    code, out, _ = run(
        capsys,
        "inspect",
        example_records_path,
        "--tokenizer",
        small_tokenizer_dir,
        "--allowed-max-length",
        "60",
    )
    assert code == 0
    assert f"{example_records_path}: 20 records, all valid" in out
    assert "book split (train/test/val): 17/2/1" in out
    examples = InstructionDataset(example_records, small_tokenizer).examples
    truncated = sum(len(example) > 60 for example in examples)
    empty = sum(len(example) > 60 and example.prompt_length >= 60 for example in examples)
    assert 0 < empty < truncated
    prompts = sorted(example.prompt_length for example in examples)
    for line in (
        (
            f"  prompt:   min {prompts[0]}, mean {sum(prompts) / 20:.1f}, p95 {prompts[18]}, "
            f"max {prompts[-1]}"
        ),
        "  longer than the context length 1024: 0",
        f"  truncated to 60 tokens: {truncated} (",
        f"  training on zero tokens with mask_prompt: {empty}",
        "  random:",
        "  length-grouped:",
        "  packed:",
    ):
        assert line in out


def test_show_labels_and_plot(
    capsys, example_records_path, small_tokenizer, small_tokenizer_dir, tmp_path
):
    plot = tmp_path / "lengths.png"
    code, out, _ = run(
        capsys,
        "inspect",
        example_records_path,
        "--tokenizer",
        small_tokenizer_dir,
        "--show-labels",
        "2",
        "--plot",
        plot,
    )
    assert code == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.count("\nexample ") == 2
    rows = [
        re.fullmatch(r"\s+(\d+)\s+(.*?)\s+(train|prompt|ignored)", line)
        for line in out.split("\nexample ")[1].splitlines()[2:]
        if line.strip()
    ]
    # The reference, from the record itself: the ids of prompt + response, targets shifted
    # by one and ending with end-of-text, a target is 'prompt' when it predicts a token of
    # the prompt (whose ids are the leading ones the prompt alone encodes to).
    record = load_instructions(example_records_path)[0]
    prompt = format_input(record) + "\n\n### Response:\n"
    ids = small_tokenizer.encode(prompt + record["output"])
    prompt_ids = small_tokenizer.encode(prompt)
    prompt_length = next(
        (i for i, (a, b) in enumerate(zip(ids, prompt_ids)) if a != b), len(prompt_ids)
    )
    targets = ids[1:] + [small_tokenizer.eos_id]
    assert len(rows) == len(ids) and all(rows)
    for position, (row, token, target) in enumerate(zip(rows, ids, targets)):
        assert int(row[1]) == position
        assert row[2].startswith(repr(small_tokenizer.decode([token])))
        assert row[2].endswith(repr(small_tokenizer.decode([target])))
        assert row[3] == ("prompt" if position < prompt_length - 1 else "train"), position
    assert rows[-1][2].endswith("'<|endoftext|>'")


def test_prompt_longer_than_the_context_exits_2(capsys, example_records_path, small_tokenizer_dir):
    code, out, err = run(
        capsys,
        "inspect",
        example_records_path,
        "--tokenizer",
        small_tokenizer_dir,
        "--context-length",
        "30",
    )
    assert code == 2
    assert "padding efficiency" in out
    assert err.startswith(f"error: {example_records_path}: record index 0: prompt alone is ")
    assert "the context length is 30: no room for the response" in err


def test_without_a_gpt2_vocabulary_record_stats_still_print(
    capsys, example_records_path, monkeypatch
):
    def unreachable(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", unreachable)
    code, out, _ = run(capsys, "inspect", example_records_path)
    assert code == 0
    assert "20 records, all valid" in out and "output characters:" in out
    assert "token statistics skipped: they need a tokenizer" in out
    assert "--tokenizer path/to/tokenizer.json" in out


def test_a_missing_tokenizer_file_is_an_error(capsys, example_records_path, tmp_path):
    code, _, err = run(
        capsys, "inspect", example_records_path, "--tokenizer", tmp_path / "tok.json"
    )
    assert code == 2 and "no such tokenizer" in err


def test_builtin_writes_a_loadable_file(capsys, tmp_path):
    out_file = tmp_path / "builtin.json"
    code, out, _ = run(capsys, "builtin", "--out", out_file, "--seed", "1")
    assert code == 0
    count = len(json.loads(out_file.read_text()))
    assert out.strip() == f"wrote {count} records to {out_file}"
    assert len(load_instructions(out_file)) == count > 0  # valid records
    write_builtin(tmp_path / "again.json", seed=1)
    assert (tmp_path / "again.json").read_bytes() == out_file.read_bytes()  # seeded


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["data", "inspect", "--help"])
    assert caught.value.code == 0
    help_text = capsys.readouterr().out
    # without --model: GPT-2's tokenizer and a 1024-token context; with it, the model's
    assert "tokenizer is --tokenizer, else gpt2" in " ".join(help_text.split())
    assert "(default: --model's, else 1024)" in help_text


def test_a_slow_inspection_shows_progress_on_stderr(
    monkeypatch, capsys, example_records_path, small_tokenizer_dir
):
    import instructkit.console

    monkeypatch.setattr(instructkit.console, "PROGRESS_DELAY", 0.0)  # as if the file were big
    args = ["data", "inspect", str(example_records_path), "--tokenizer", str(small_tokenizer_dir)]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    assert "tokenizing:   0%|" in captured.err and "0/20 [" in captured.err
    assert "packed batches:" in captured.err and "batch/s" in captured.err
    assert "tokenizing" not in captured.out  # the report itself is unchanged
    assert cli.main([*args, "--quiet"]) == 0
    assert capsys.readouterr().err == ""
