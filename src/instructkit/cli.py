"""The `instructkit` command: parses arguments, calls the library, nothing else.

Each subcommand lives in `instructkit.commands.<name>` with `register(subparsers)`
and a `run(args) -> int`; heavy imports (torch) happen inside `run` so `--help` is fast.
Exit codes: 0 success, 2 usage or input error (one line per problem), 1 internal failure,
130 interrupted (SIGINT), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from instructkit import __version__
from instructkit.commands import HelpFormatter
from instructkit.errors import UserError

COMMANDS = ["demo", "data", "finetune", "dpo", "generate", "evaluate", "serve", "chat"]
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
    remember_parsers(subparsers)
    return parser


def remember_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Each (sub)subcommand's namespace names its own parser, for its own usage line."""
    for subparser in subparsers.choices.values():
        subparser.set_defaults(parser=subparser)
        for action in subparser._actions:
            if isinstance(action, argparse._SubParsersAction):
                remember_parsers(action)


def print_problems(problems: list[str]) -> None:
    for problem in problems[:MAX_PROBLEMS_SHOWN]:
        print(f"error: {problem}", file=sys.stderr)
    if len(problems) > MAX_PROBLEMS_SHOWN:
        print(f"error: ... and {len(problems) - MAX_PROBLEMS_SHOWN} more problems", file=sys.stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, `docker stop`, job schedulers), handled like Ctrl-C:
    a command saves what it can, then exits 143 instead of 130."""


def raise_terminated(signum, frame) -> None:
    raise Terminated()


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Like `parse_args`, but an unknown flag is reported with the subcommand's usage,
    not the top-level one."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def quiet_broken_pipe() -> None:
    """The reader of our output is gone (`| head`, or `| tee` killed by the same Ctrl-C):
    send further output nowhere instead of failing at every print and at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError):
            pass


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(build_parser(), argv)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return int(args.run(args) or 0)
    except UserError as error:
        print_problems(error.problems)
        return 2
    except KeyboardInterrupt as interrupt:
        code = 143 if isinstance(interrupt, Terminated) else 130
        try:
            print("terminated" if code == 143 else "interrupted", file=sys.stderr)
        except BrokenPipeError:
            quiet_broken_pipe()
        return code
    except BrokenPipeError:
        quiet_broken_pipe()
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    raise SystemExit(main())
