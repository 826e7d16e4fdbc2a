"""The exit-code and message contract every command keeps (usage errors, signals, pipes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from instructkit.cli import COMMANDS, build_parser, main


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


# ---- output paths are checked before any long work: exit 2, one line ---------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "instructions.json"


OUTPUT_COMMANDS = ["finetune", "generate", "evaluate", "data inspect --plot", "demo"]


def output_cases(tmp_path: Path) -> dict[str, list[str]]:
    """Each command, with OUT where its output goes; a model that cannot load shows the
    check comes before the model (the error would be about the model otherwise)."""
    responses = tmp_path / "responses.json"
    responses.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b",
                                      "model_response": "b"}]))  # fmt: skip
    return {
        "finetune": ["finetune", "--data", str(EXAMPLES), "--model", "no-such-model",
                     "--out", "OUT", "--quiet"],
        "generate": ["generate", "--model", "no-such-model", "--data", str(EXAMPLES),
                     "--out", "OUT", "--quiet"],
        "evaluate": ["evaluate", "--responses", str(responses), "--out", "OUT", "--quiet"],
        "data inspect --plot": ["data", "inspect", str(EXAMPLES), "--tokenizer",
                                "no-such-tokenizer.json", "--plot", "OUT"],
        "demo": ["demo", "--quick", "--out", "OUT", "--quiet"],
    }  # fmt: skip


def assert_one_line(capsys, args: list[str], *expected: str) -> None:
    """In-process (fast); the subprocess tests above and in each command's module cover
    what only a real process shows (signals, pipes, exit codes at interpreter exit)."""
    assert main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and all(text in line for text in expected), line


@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_an_output_in_a_read_only_directory_is_refused_first(
    command, tmp_path, read_only_dir, capsys
):
    out = read_only_dir / "sub" / "out.json"
    args = [str(out) if a == "OUT" else a for a in output_cases(tmp_path)[command]]
    assert_one_line(capsys, args, str(out), f"cannot write in {read_only_dir}")


@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_an_output_under_a_file_is_refused_first(command, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "out.json"
    args = [str(out) if a == "OUT" else a for a in output_cases(tmp_path)[command]]
    assert_one_line(capsys, args, str(out), "a-file is a file, not a directory")


@pytest.mark.parametrize("command", ["generate", "evaluate", "data inspect --plot"])
def test_a_file_output_that_is_a_directory_is_refused_first(command, tmp_path, capsys):
    out = tmp_path / "a-dir"
    out.mkdir()
    args = [str(out) if a == "OUT" else a for a in output_cases(tmp_path)[command]]
    assert_one_line(capsys, args, str(out), "is a directory")
    assert list(out.iterdir()) == [] and not list(tmp_path.glob("*.partial"))


# ---- bad devices and numbers: exit 2, one line ----------------------------------------


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a torch without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:5", "mps"])
def test_finetune_on_a_device_this_machine_lacks(device, tmp_path, capsys):
    args = ["finetune", "--data", str(EXAMPLES), "--model", "random:tiny",
            "--out", str(tmp_path / "run"), "--device", device]  # fmt: skip
    assert_one_line(capsys, args, f"--device {device} asked for, but")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--check-examples", "0", "--check-examples must be at least 1, got 0"),
        ("--check-examples", "-3", "--check-examples must be at least 1, got -3"),
        ("--show-labels", "-1", "--show-labels must be at least 0, got -1"),
    ],
)
def test_data_inspect_counts_out_of_range(flag, value, message, capsys):
    assert_one_line(capsys, ["data", "inspect", str(EXAMPLES), flag, value], message)


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("command", ["generate", "chat"])
def test_a_temperature_that_is_not_a_finite_number(command, value, capsys):
    args = [command, "--model", "random:tiny", "--temperature", value]
    if command == "generate":
        args += ["--prompt", "Hi"]
    assert_one_line(capsys, args, "temperature must be a finite number")


def test_counts_of_one_are_singular(tmp_path, capsys):
    from instructkit.console import plural

    assert [plural(1, "record"), plural(2, "record"), plural(1100, "record")] == [
        "1 record", "2 records", "1,100 records"
    ]  # fmt: skip
    assert plural(1, "process", "processes") == "1 process"
    one = tmp_path / "one.json"
    one.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi."}]))
    assert main(["data", "inspect", str(one), "--tokenizer", "none.json", "--quiet"]) == 2
    assert f"{one}: 1 record, all valid" in capsys.readouterr().out
    args = ["finetune", "--data", str(EXAMPLES), "--model", "random:tiny", "--tokenizer",
            str(tmp_path / "tok"), "--out", str(tmp_path / "run"), "--batch-size", "64"]  # fmt: skip
    from instructkit.tokenizer import train_tokenizer

    train_tokenizer(["Say hi. Hi."] * 5, 300).save(tmp_path / "tok")
    assert_one_line(capsys, args, "fill no batch of 64 per process (1 process)")
