"""Write records back to a file in the formats `load_instructions` reads: JSON list, JSONL, CSV.

Tools that clean or extend a records file (`data dedup`, `data generate`, `data prefs`)
write their result in the input's format, so the file goes wherever the input went.
The format comes from the output's suffix when it names one, else from the file the
records came from, detected as `load_instructions` detects it. Writes are atomic.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from instructkit.data.records import JSONL_SUFFIXES
from instructkit.files import write_atomic

FORMATS = ("json", "jsonl", "csv")


def detect_format(path: str | Path) -> str:
    """The format `load_instructions` reads `path` as (its suffix, else its first character)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix == ".json":
        return "json"
    try:
        with path.open("rb") as handle:
            head = handle.read(4096).decode("utf-8-sig", "replace").lstrip()
    except OSError:
        return "json"
    return "json" if head.startswith("[") or not head else "jsonl"


def output_format(out: str | Path, source: str | Path | None = None) -> str:
    """The output's own suffix when it names a format, else the source's format, else JSON."""
    suffix = Path(out).suffix.lower()
    if suffix in (".json", ".csv") or suffix in JSONL_SUFFIXES:
        return detect_format(out)
    return detect_format(source) if source is not None else "json"


def format_records(records: Sequence[dict], fmt: str) -> str:
    """The text of a records file in `fmt` (one of FORMATS)."""
    if fmt == "json":
        return json.dumps(list(records), indent=2, ensure_ascii=False) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    if fmt == "csv":
        columns = list(dict.fromkeys(key for record in records for key in record))
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, columns, lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow({key: _cell(record.get(key)) for key in columns})
        return buffer.getvalue()
    raise ValueError(f"unknown records format {fmt!r}; one of {', '.join(FORMATS)}")


def save_records(
    path: str | Path, records: Sequence[dict], source: str | Path | None = None
) -> str:
    """Write `records` to `path` atomically in `output_format(path, source)`; returns the format."""
    fmt = output_format(path, source)
    write_atomic(path, format_records(records, fmt))
    return fmt


def _cell(value) -> str:
    """A CSV cell: text as it is, "" for a missing value, anything else as JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
