"""metrics.jsonl: one JSON row per logged step, and the running window each row averages.

Rows are appended as the run goes (a crash keeps what was logged); a resumed run first
drops the rows logged after its checkpoint, so the file reads as one uninterrupted run.
`LossWindow` is saved in checkpoints for the same reason: the first row after a resume
averages over the same steps as the uninterrupted run's row.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from instructkit.files import write_atomic


@dataclass
class LossWindow:
    """Loss and throughput over the steps since the last logged row, weighted by units."""

    loss_sum: float = 0.0
    tokens: float = 0.0
    seconds: float = 0.0

    def add(self, loss_sum: float, tokens: float, seconds: float) -> None:
        self.loss_sum += loss_sum
        self.tokens += tokens
        self.seconds += seconds

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.tokens, 1.0)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def append_metrics(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines an interrupted run logged after its last checkpoint, atomically."""
    rows = [row for row in read_metrics(path) if row["step"] <= step]
    write_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))
