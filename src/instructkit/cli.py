"""The `instructkit` command: parses arguments, calls the library, nothing else.

Each subcommand lives in `instructkit.commands.<name>` with `register(subparsers)`
and a `run(args) -> int`; heavy imports (torch) happen inside `run` so `--help` is fast.
Exit codes: 0 success, 2 usage or input error (one line per problem), 1 internal failure,
130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from instructkit import __version__
from instructkit.commands import HelpFormatter
from instructkit.errors import UserError

COMMANDS = ["demo", "data", "finetune", "generate", "evaluate", "serve", "chat"]
MAX_PROBLEMS_SHOWN = 20


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructkit",
        description="Instruction fine-tuning of GPT-style language models.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"instructkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"instructkit.commands.{name}").register(subparsers)
    return parser


def print_problems(problems: list[str]) -> None:
    for problem in problems[:MAX_PROBLEMS_SHOWN]:
        print(f"error: {problem}", file=sys.stderr)
    if len(problems) > MAX_PROBLEMS_SHOWN:
        print(f"error: ... and {len(problems) - MAX_PROBLEMS_SHOWN} more problems", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UserError as error:
        print_problems(error.problems)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
