"""The exit-code and message contract every command keeps (usage errors, signals, pipes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from instructkit.cli import COMMANDS, build_parser


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "instructkit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kwargs,
    )


@pytest.mark.parametrize(
    "args, usage",
    [
        (["finetune", "--bogus"], "usage: instructkit finetune"),
        (["data", "inspect", "x.json", "--frob"], "usage: instructkit data inspect"),
        (["generate", "--model", "m", "--prompt", "p", "--nope"], "usage: instructkit generate"),
    ],
)
def test_an_unknown_flag_shows_the_subcommands_usage(args, usage):
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stderr.startswith(usage)
    assert "unrecognized arguments: --" in result.stderr


def help_texts(parser) -> list[str]:
    texts = [parser.format_help()]
    for action in parser._actions:
        if isinstance(action.choices, dict):
            for subparser in action.choices.values():
                texts += help_texts(subparser)
    return texts


def test_no_help_shows_a_default_of_none():
    texts = help_texts(build_parser())
    assert len(texts) > len(COMMANDS)
    for text in texts:
        assert "default: None" not in text, text.splitlines()[0]


def test_a_diverging_finetune_exits_2_with_one_line(small_tokenizer_dir, tmp_path):
    result = run_cli(
        "finetune", "--data", "examples/instructions.json", "--tokenizer",
        str(small_tokenizer_dir), "--model", "random:tiny", "--out", str(tmp_path / "run"),
        "--lr", "1e30", "--batch-size", "2", "--max-steps", "3", "--eval-every", "0",
        "--eval-batches", "1", "--save-every", "0", "--device", "cpu", "--quiet",
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: loss became nan at step 2")
    assert "Traceback" not in result.stderr


BUGGY_COMMAND = """
import sys
import instructkit.commands.data as command

def run(args):
    raise RuntimeError("a bug, not the user's fault")

command.run = run  # what register() hands to the parser
from instructkit.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_an_internal_failure_exits_1_with_its_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", BUGGY_COMMAND, "data", "inspect", "examples/instructions.json"],
        capture_output=True, text=True, timeout=120, check=False,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert result.returncode == 1
    assert "RuntimeError: a bug, not the user's fault" in result.stderr
    assert "Traceback" in result.stderr  # the report a bug needs
