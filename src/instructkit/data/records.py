"""Stage 1: read instruction records from JSON, JSONL or CSV and validate them all at once.

Every record comes out as a dict with string `instruction`, `input` ("" when missing or
null) and `output`, plus whatever extra keys it had (they flow through to responses).
A conversation record (OpenAI `{"messages": [{"role", "content"}]}` or ShareGPT
`{"conversations": [{"from", "value"}]}`) comes out as `{"messages": [{"role",
"content"}], ...extra keys}` with roles system/user/assistant: an optional system turn,
then user and assistant turns alternating, ending with the assistant's.
A field mapping renames source columns (`{"instruction": "prompt"}`). Validation collects
every problem before raising, each naming the file, the record (index for a JSON list,
line for JSONL and CSV), the field and the reason, so a user fixes a file in one pass.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from instructkit.errors import DataError, UserError

FIELDS = ("instruction", "input", "output")
REQUIRED = ("instruction", "output")
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
# Conversation layouts: record key -> (role key, content key, {role as written: our role}).
CONVERSATION_FORMATS = {
    "messages": ("role", "content", {"system": "system", "user": "user", "assistant": "assistant"}),
    "conversations": ("from", "value", {"system": "system", "human": "user", "gpt": "assistant"}),
}
CONVERSATION_KEYS = frozenset(CONVERSATION_FORMATS)


def parse_fields(spec: str | None) -> dict[str, str] | None:
    """Parse `--fields instruction=prompt,output=completion` into {canonical: source}."""
    if not spec:
        return None
    mapping: dict[str, str] = {}
    problems = []
    for part in spec.split(","):
        name, sep, source = part.partition("=")
        name, source = name.strip(), source.strip()
        if not sep or not name or not source:
            problems.append(f"--fields: {part.strip()!r} is not NAME=COLUMN")
        else:
            mapping[name] = source
    if problems:
        raise UserError(problems)
    check_fields(mapping)
    return mapping


def check_fields(fields: dict[str, str]) -> None:
    unknown = [name for name in fields if name not in FIELDS]
    if unknown:
        raise UserError(
            [
                f"--fields: unknown field {name!r} (known fields: {', '.join(FIELDS)})"
                for name in unknown
            ]
        )


def load_instructions(path: str | Path, fields: dict[str, str] | None = None) -> list[dict]:
    """Read and validate a JSON list, JSONL or CSV file; raise DataError with every problem."""
    path = Path(path)
    fields = dict(fields or {})
    check_fields(fields)
    text = _read_text(path)
    if not text.strip():
        raise DataError(f"{path}: empty file; expected a JSON list, JSONL or CSV of records")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        raw = _read_csv(path, text, fields)
    elif suffix in JSONL_SUFFIXES:
        raw = _read_jsonl(text)
    elif suffix == ".json" or text.lstrip().startswith("["):
        raw = _read_json_list(path, text)
    else:
        raw = _read_jsonl(text)
    records, problems = [], []
    for where, item in raw:
        if isinstance(item, Unreadable):
            problems.append(f"{path}: {where}{item}")
            continue
        if isinstance(item, dict) and CONVERSATION_KEYS & item.keys():
            record, record_problems = _normalize_conversation(item)
        else:
            record, record_problems = _normalize(item, fields)
        problems.extend(f"{path}: {where}{detail}" for detail in record_problems)
        records.append(record)
    if problems:
        raise DataError(problems)
    if not records:
        raise DataError(f"{path}: no records")
    return records


class Unreadable(str):
    """A line or row that could not be parsed: its problem, in place of a record."""


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a records file") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
            f"{error.start}); save the file as UTF-8"
        ) from None


def _read_json_list(path: Path, text: str) -> list[tuple[str, object]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        hint = (
            " (several JSON values: is it JSON Lines? name it .jsonl)"
            if (error.msg == "Extra data")
            else ""
        )
        raise DataError(
            f"{path}: line {error.lineno}, column {error.colno}: invalid JSON: {error.msg}{hint}"
        ) from None
    if not isinstance(data, list):
        raise DataError(
            f"{path}: top level is {_kind(data)}, expected a JSON list of records "
            "(objects with instruction, input, output)"
        )
    return [(f"record index {index}", item) for index, item in enumerate(data)]


def _read_jsonl(text: str) -> list[tuple[str, object]]:
    raw = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as error:
            raw.append(
                (f"line {number}", Unreadable(f", column {error.colno}: invalid JSON: {error.msg}"))
            )
    return raw


def _read_csv(path: Path, text: str, fields: dict[str, str]) -> list[tuple[str, object]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except csv.Error as error:
        raise DataError(f"{path}: line 1: invalid CSV header ({error})") from None
    missing = [
        f"{path}: CSV header has no column {fields.get(name, name)!r}"
        + (f" (mapped to {name})" if name in fields else "")
        + f"; columns are: {', '.join(header)}"
        for name in REQUIRED
        if fields.get(name, name) not in header
    ]
    if missing:
        raise DataError(missing)
    raw: list[tuple[str, object]] = []
    line = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            raw.append((f"line {line}", Unreadable(f": invalid CSV ({error})")))
            break
        if any(cell.strip() for cell in row):
            if len(row) != len(header):
                raw.append(
                    (
                        f"line {line}",
                        Unreadable(f": has {len(row)} cells, the header has {len(header)}"),
                    )
                )
            else:
                raw.append((f"line {line}", dict(zip(header, row))))
        line = reader.line_num + 1
    return raw


def _normalize(item, fields: dict[str, str]) -> tuple[dict, list[str]]:
    """One record in canonical form, and its problems as `, field 'x': reason` suffixes."""
    if not isinstance(item, dict):
        return {}, [f": is {_kind(item)}, expected an object with instruction, input, output"]
    sources = {name: fields.get(name, name) for name in FIELDS}
    record: dict = {}
    problems = []
    for name, source in sources.items():
        label = f"field {source!r}" + (f" (mapped to {name})" if source != name else "")
        value = item.get(source)
        if name == "input" and value is None:
            value = ""
        elif value is None:
            reason = "missing" if source not in item else "is null"
            problems.append(f", {label}: {reason}; every record needs a non-empty {name}")
            continue
        if not isinstance(value, str):
            problems.append(f", {label}: is {_kind(value)}, expected a string")
            continue
        if name in REQUIRED and not value.strip():
            problems.append(f", {label}: is empty; every record needs a non-empty {name}")
        record[name] = value
    record.update((key, value) for key, value in item.items() if key not in sources.values())
    return record, problems


def _normalize_conversation(item: dict) -> tuple[dict, list[str]]:
    """A conversation as `{"messages": [...]}` and its problems, like `_normalize`."""
    if CONVERSATION_KEYS <= item.keys():
        return {}, [", fields 'messages' and 'conversations': a record holds one conversation"]
    key = "messages" if "messages" in item else "conversations"
    record = {name: value for name, value in item.items() if name != key}
    turns = item[key]
    if not isinstance(turns, list) or not turns:
        kind = "an empty list" if turns == [] else _kind(turns)
        return record, [f", field {key!r}: is {kind}, expected a list of turns"]
    role_key, content_key, roles = CONVERSATION_FORMATS[key]
    messages, problems = [], []
    for index, turn in enumerate(turns):
        label = f"field '{key}[{index}]"
        if not isinstance(turn, dict):
            problems.append(
                f", {label}': is {_kind(turn)}, expected an object with {role_key} and {content_key}"
            )
            continue
        role, content = turn.get(role_key), turn.get(content_key)
        if role not in roles:
            reason = "missing" if role is None else f"unknown role {role!r}"
            problems.append(f", {label}.{role_key}': {reason}; expected {', '.join(roles)}")
        if not isinstance(content, str):
            reason = "missing" if content is None else f"is {_kind(content)}, expected a string"
            problems.append(f", {label}.{content_key}': {reason}")
        elif not content.strip():
            problems.append(f", {label}.{content_key}': is empty; every turn needs text")
        messages.append({"role": roles.get(role), "content": content})
    if not problems:
        problems.extend(_order_problems(key, messages))
    record["messages"] = messages
    return record, problems


def _order_problems(key: str, messages: list[dict]) -> list[str]:
    """The first turn out of order: system may only open; then user, assistant alternate."""
    role_key, _, roles = CONVERSATION_FORMATS[key]
    written = {ours: theirs for theirs, ours in roles.items()}  # our role -> the file's name
    order = [message["role"] for message in messages]
    if "assistant" not in order:
        return [f", field {key!r}: no assistant turn; a conversation needs an answer to learn"]
    offset = 1 if order[0] == "system" else 0
    for index in range(offset, len(order)):
        expected = ("user", "assistant")[(index - offset) % 2]
        if order[index] != expected:
            found, belongs = written[order[index]], written[expected]
            return [
                f", field '{key}[{index}].{role_key}': {found!r} where a {belongs!r} turn "
                + "belongs; turns go: optional system, then user and assistant alternating"
            ]
    if order[-1] != "assistant":
        last = written[order[-1]]
        return [f", field {key!r}: ends with a {last!r} turn; the last turn is the answer"]
    return []


def _kind(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else type(value).__name__
