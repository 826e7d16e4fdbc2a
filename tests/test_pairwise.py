"""Pairwise judging through `instructkit evaluate --against`: both orders asked, position
bias cancelled, win/tie/loss and the Wilson interval, and a resumed run asking only what
is missing."""

from __future__ import annotations

import json
import math
import re

import pytest
from fake_servers import FakeJudge

from instructkit.cli import main
from instructkit.evaluate.pairwise import wilson_interval


def write_pair(tmp_path, n: int = 6):
    """A's answers are polite, B's rude; record 5's answers are the same text."""
    a, b = [], []
    for i in range(n):
        base = {"instruction": f"Task {i}.", "input": "", "output": f"Answer {i}."}
        a.append({**base, "model_response": f"Gladly: answer {i}."})
        b.append(
            {**base, "model_response": f"answer {i}, duh" if i < 5 else f"Gladly: answer {i}."}
        )
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(list(reversed(b))))  # matched by record, not order
    return tmp_path / "a.json", tmp_path / "b.json"


def responses_in(prompt: str) -> tuple[str, str]:
    first, second = re.findall(r"Response \d: `([^`]*)`", prompt)
    return first, second


def fair_judge(prompt: str, attempt: int):
    """Prefers the polite answer; tie when both are; record 4 it always calls for position 1."""
    first, second = responses_in(prompt)
    if "Task 4." in prompt:
        return ("reply", "1")
    if first.startswith("Gladly") and second.startswith("Gladly"):
        return ("reply", "Tie.")
    return ("reply", "1" if first.startswith("Gladly") else "Response 2 is better: 2")


def test_wins_ties_losses_and_interval(tmp_path, capsys):
    a, b = write_pair(tmp_path)
    with FakeJudge(fair_judge) as judge:
        args = ["evaluate", "--responses", str(a), "--against", str(b), "--judge", "ollama:j"]
        assert main([*args, "--url", judge.url, "--quiet"]) == 0
        assert sum(judge.requests.values()) == 12  # 6 pairs x 2 orders, each asked once
    printed = capsys.readouterr().out
    doc = json.loads((tmp_path / "pairwise.json").read_text())
    summary = doc["pairwise"]
    # records 0-3 won, 4 (position-biased judge) and 5 (same answer) tie
    assert (summary["win"], summary["tie"], summary["loss"]) == (4, 2, 0)
    assert summary["win_rate"] == pytest.approx(5 / 6)
    # Wilson written out: centre (p + z^2/2n) / (1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
    z, n, p = 1.96, 6, 5 / 6
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert summary["win_rate_ci95"] == pytest.approx([centre - half, centre + half], abs=1e-4)
    assert "4 wins, 2 ties, 0 losses" in printed and "win rate 0.833" in printed
    assert [r["outcome"] for r in doc["records"]] == ["win"] * 4 + ["tie"] * 2


def test_swapping_sides_mirrors_the_result(tmp_path):
    a, b = write_pair(tmp_path)
    with FakeJudge(fair_judge) as judge:
        args = ["evaluate", "--responses", str(b), "--against", str(a), "--judge", "ollama:j"]
        assert main([*args, "--url", judge.url, "--out", str(tmp_path / "ba.json"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "ba.json").read_text())["pairwise"]
    assert (summary["win"], summary["tie"], summary["loss"]) == (0, 2, 4)


def test_an_interrupted_comparison_resumes(tmp_path):
    a, b = write_pair(tmp_path)
    failing = {"on": True}

    def flaky(prompt: str, attempt: int):
        if failing["on"] and "Task 2." in prompt:
            return ("status", 500)
        return fair_judge(prompt, attempt)

    with FakeJudge(flaky) as judge:
        args = ["evaluate", "--responses", str(a), "--against", str(b), "--judge", "ollama:j"]
        args += ["--url", judge.url, "--retries", "0", "--quiet"]
        assert main(args) == 0
        summary = json.loads((tmp_path / "pairwise.json").read_text())["pairwise"]
        assert summary["n_errors"] == 2 and summary["n_decided"] == 5
        failing["on"] = False
        asked = sum(judge.requests.values())
        assert main(args) == 0
        assert sum(judge.requests.values()) - asked == 2  # only record 2's two orders again
    summary = json.loads((tmp_path / "pairwise.json").read_text())["pairwise"]
    assert summary["n_decided"] == 6 and summary["win"] == 4 and summary["n_errors"] == 0


def test_against_needs_a_judge_and_the_same_records(tmp_path, capsys):
    a, b = write_pair(tmp_path)
    assert main(["evaluate", "--responses", str(a), "--against", str(b)]) == 2
    assert "--against needs --judge" in capsys.readouterr().err
    (tmp_path / "c.json").write_text(json.dumps(json.loads(b.read_text())[:3]))
    args = ["evaluate", "--responses", str(a), "--against", str(tmp_path / "c.json")]
    assert main([*args, "--judge", "ollama:j", "--url", "http://127.0.0.1:9"]) == 2
    assert "must answer the same records" in capsys.readouterr().err


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(10, 10)
    assert high == pytest.approx(1.0) and low == pytest.approx(0.7225, abs=1e-3)
