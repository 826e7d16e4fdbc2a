"""The exit-code and message contract every command keeps (usage errors, signals, pipes)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from instructkit.cli import COMMANDS, build_parser


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "instructkit", *args],
        capture_output=True, text=True, timeout=120, check=False, **kwargs,
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
