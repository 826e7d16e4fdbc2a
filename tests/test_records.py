"""Tests for records: JSON/JSONL/CSV reading, field mapping, and one message per problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shared_data import SHARED_DATA

from instructkit.data import load_instructions, parse_fields
from instructkit.errors import DataError, UserError


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def problems(path: Path, fields: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(DataError) as caught:
        load_instructions(path, fields)
    return caught.value.problems


# --- files that load -------------------------------------------------------------------


def test_json_list_with_null_and_missing_input_and_extra_keys(tmp_path):
    path = write(
        tmp_path,
        "d.json",
        json.dumps(
            [
                {"instruction": "a", "input": None, "output": "b", "id": 7},
                {"instruction": "c", "output": "d"},
                {"instruction": "e", "input": "f", "output": "g"},
            ]
        ),
    )
    records = load_instructions(path)
    assert records == [
        {"instruction": "a", "input": "", "output": "b", "id": 7},
        {"instruction": "c", "input": "", "output": "d"},
        {"instruction": "e", "input": "f", "output": "g"},
    ]
    assert list(records[0]) == ["instruction", "input", "output", "id"]


def test_jsonl_skips_blank_lines(tmp_path):
    path = write(
        tmp_path,
        "d.jsonl",
        '{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "input": "x", "output": "d"}\n',
    )
    assert load_instructions(path) == [
        {"instruction": "a", "input": "", "output": "b"},
        {"instruction": "c", "input": "x", "output": "d"},
    ]


def test_csv_with_field_mapping_keeps_extra_columns(tmp_path):
    path = write(
        tmp_path,
        "d.csv",
        'prompt,context,completion,source\n"say ""hi""",,hi,web\n"two\nlines",ctx,ok,book\n',
    )
    fields = parse_fields("instruction=prompt,input=context,output=completion")
    assert load_instructions(path, fields) == [
        {"instruction": 'say "hi"', "input": "", "output": "hi", "source": "web"},
        {"instruction": "two\nlines", "input": "ctx", "output": "ok", "source": "book"},
    ]


def test_utf8_bom_is_accepted(tmp_path):
    path = write(tmp_path, "d.json", b'\xef\xbb\xbf[{"instruction": "a", "output": "b"}]')
    assert load_instructions(path)[0]["instruction"] == "a"


def test_example_file_in_repo_is_valid(example_records):
    assert len(example_records) == 20
    assert any(record["input"] for record in example_records)
    assert any(not record["input"] for record in example_records)


def test_book_data_loads_when_present():
    book = SHARED_DATA / "instruction-data.json"
    if not book.exists():
        pytest.skip("book data not present")
    records = load_instructions(book)
    assert len(records) == 1100
    assert records == json.loads(book.read_text(encoding="utf-8"))


# --- one message per problem ---------------------------------------------------------


def test_missing_file(tmp_path):
    assert problems(tmp_path / "nope.json") == [f"{tmp_path / 'nope.json'}: no such file"]


def test_empty_file(tmp_path):
    path = write(tmp_path, "d.json", "  \n")
    assert problems(path) == [f"{path}: empty file; expected a JSON list, JSONL or CSV of records"]


def test_not_utf8(tmp_path):
    path = write(tmp_path, "d.json", b'[\n{"instruction": "caf\xe9", "output": "b"}]')
    assert problems(path) == [
        f"{path}: line 2: not UTF-8 text (byte 0xe9 at offset 22); save the file as UTF-8"
    ]


def test_invalid_json_names_line_and_column(tmp_path):
    path = write(tmp_path, "d.json", '[\n  {"instruction": "a" "output": "b"}\n]')
    assert problems(path) == [f"{path}: line 2, column 23: invalid JSON: Expecting ',' delimiter"]


def test_jsonl_content_in_json_file_gets_a_hint(tmp_path):
    path = write(tmp_path, "d.json", '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    (problem,) = problems(path)
    assert problem.startswith(f"{path}: line 2, column 1: invalid JSON: Extra data")
    assert "name it .jsonl" in problem


def test_top_level_not_a_list(tmp_path):
    path = write(tmp_path, "d.json", '{"instruction": "a", "output": "b"}')
    assert problems(path) == [
        (
            f"{path}: top level is an object, expected a JSON list of records "
            "(objects with instruction, input, output)"
        )
    ]


def test_record_not_an_object(tmp_path):
    path = write(tmp_path, "d.json", '[{"instruction": "a", "output": "b"}, "text", 3]')
    assert problems(path) == [
        f"{path}: record index 1: is a string, expected an object with instruction, input, output",
        f"{path}: record index 2: is a number, expected an object with instruction, input, output",
    ]


def test_missing_and_empty_required_fields_all_reported(tmp_path):
    path = write(
        tmp_path,
        "d.json",
        json.dumps(
            [
                {"output": "b"},
                {"instruction": "  ", "output": "b"},
                {"instruction": "a", "output": ""},
                {"instruction": "a", "output": None},
            ]
        ),
    )
    assert problems(path) == [
        (
            f"{path}: record index 0, field 'instruction': missing; "
            "every record needs a non-empty instruction"
        ),
        (
            f"{path}: record index 1, field 'instruction': is empty; "
            "every record needs a non-empty instruction"
        ),
        f"{path}: record index 2, field 'output': is empty; every record needs a non-empty output",
        f"{path}: record index 3, field 'output': is null; every record needs a non-empty output",
    ]


def test_non_string_values(tmp_path):
    path = write(
        tmp_path,
        "d.json",
        json.dumps([{"instruction": ["a"], "input": 5, "output": {"text": "b"}}]),
    )
    assert problems(path) == [
        f"{path}: record index 0, field 'instruction': is a list, expected a string",
        f"{path}: record index 0, field 'input': is a number, expected a string",
        f"{path}: record index 0, field 'output': is an object, expected a string",
    ]


def test_bad_jsonl_lines_reported_with_valid_lines_checked_too(tmp_path):
    path = write(
        tmp_path,
        "d.jsonl",
        '{"instruction": "a", "output": "b"}\n{"instruction": "a",\n{"instruction": "c"}\n',
    )
    assert problems(path) == [
        (
            f"{path}: line 2, column 21: invalid JSON: Expecting property name enclosed in double "
            "quotes"
        ),
        f"{path}: line 3, field 'output': missing; every record needs a non-empty output",
    ]


def test_csv_missing_column(tmp_path):
    path = write(tmp_path, "d.csv", "instruction,answer\na,b\n")
    assert problems(path) == [
        f"{path}: CSV header has no column 'output'; columns are: instruction, answer"
    ]


def test_csv_missing_mapped_column_names_the_mapping(tmp_path):
    path = write(tmp_path, "d.csv", "instruction,answer\na,b\n")
    assert problems(path, {"output": "completion"}) == [
        (
            f"{path}: CSV header has no column 'completion' (mapped to output); "
            "columns are: instruction, answer"
        )
    ]


def test_csv_rows_report_physical_lines(tmp_path):
    path = write(tmp_path, "d.csv", 'instruction,input,output\n"multi\nline",,ok\nx,,\ny,z\n')
    assert problems(path) == [
        f"{path}: line 4, field 'output': is empty; every record needs a non-empty output",
        f"{path}: line 5: has 2 cells, the header has 3",
    ]


def test_mapped_field_missing_names_source_and_target(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"prompt": "a", "answer": "b"}\n')
    assert problems(path, {"instruction": "prompt", "output": "completion"}) == [
        (
            f"{path}: line 1, field 'completion' (mapped to output): missing; "
            "every record needs a non-empty output"
        )
    ]


def test_unknown_fields_mapping():
    with pytest.raises(UserError) as caught:
        parse_fields("instruction=prompt,answer=completion")
    assert caught.value.problems == [
        "--fields: unknown field 'answer' (known fields: instruction, input, output)"
    ]


def test_malformed_fields_mapping():
    with pytest.raises(UserError) as caught:
        parse_fields("instruction")
    assert caught.value.problems == ["--fields: 'instruction' is not NAME=COLUMN"]


def test_empty_list_has_no_records(tmp_path):
    path = write(tmp_path, "d.json", "[]")
    assert problems(path) == [f"{path}: no records"]


# --- conversations ---------------------------------------------------------------------


def test_openai_and_sharegpt_conversations_load_as_messages(tmp_path):
    openai = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
        ],
        "split": "train",
    }
    sharegpt = {
        "conversations": [
            {"from": "human", "value": "2+2?"},
            {"from": "gpt", "value": "4"},
            {"from": "human", "value": "3+3?"},
            {"from": "gpt", "value": "6"},
        ]
    }
    expected = [
        openai,
        {
            "messages": [
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
                {"role": "user", "content": "3+3?"},
                {"role": "assistant", "content": "6"},
            ]
        },
        {"instruction": "a", "input": "", "output": "b"},
    ]
    records = [openai, sharegpt, {"instruction": "a", "output": "b"}]
    as_list = write(tmp_path, "c.json", json.dumps(records))
    as_lines = write(tmp_path, "c.jsonl", "\n".join(json.dumps(r) for r in records))
    assert load_instructions(as_list) == load_instructions(as_lines) == expected


def test_every_conversation_problem_names_file_record_and_field(tmp_path):
    def turn(role, content, keys=("role", "content")):
        return dict(zip(keys, (role, content)))

    gpt = ("from", "value")
    lines = [
        {"messages": [turn("user", "x"), turn("bot", "")]},
        {"messages": [turn("user", "x")]},
        {
            "conversations": [
                turn("human", "x", gpt),
                turn("human", "y", gpt),
                turn("gpt", "z", gpt),
            ]
        },
        {"messages": [turn("user", "x"), turn("assistant", "y"), turn("system", "z")]},
        {"messages": [turn("assistant", "x"), turn("user", "y")]},
        {"messages": [turn("user", "x"), turn("assistant", "y"), turn("user", "z")]},
        {"messages": [], "conversations": []},
        {"messages": []},
        {"messages": [3, {"role": "user"}, {"role": "assistant", "content": ["parts"]}]},
    ]
    path = write(tmp_path, "c.jsonl", "\n".join(json.dumps(line) for line in lines))
    order = "turns go: optional system, then user and assistant alternating"
    assert problems(path) == [
        (
            f"{path}: line 1, field 'messages[1].role': unknown role 'bot'; "
            "expected system, user, assistant"
        ),
        f"{path}: line 1, field 'messages[1].content': is empty; every turn needs text",
        (
            f"{path}: line 2, field 'messages': no assistant turn; a conversation needs an answer "
            "to learn"
        ),
        f"{path}: line 3, field 'conversations[1].from': 'human' where a 'gpt' turn belongs; "
        + order,
        f"{path}: line 4, field 'messages[2].role': 'system' where a 'user' turn belongs; " + order,
        f"{path}: line 5, field 'messages[0].role': 'assistant' where a 'user' turn belongs; "
        + order,
        f"{path}: line 6, field 'messages': ends with a 'user' turn; the last turn is the answer",
        f"{path}: line 7, fields 'messages' and 'conversations': a record holds one conversation",
        f"{path}: line 8, field 'messages': is an empty list, expected a list of turns",
        (
            f"{path}: line 9, field 'messages[0]': is a number, expected an object with role and "
            "content"
        ),
        f"{path}: line 9, field 'messages[1].content': missing",
        f"{path}: line 9, field 'messages[2].content': is a list, expected a string",
    ]
