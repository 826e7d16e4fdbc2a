"""The `instructkit` command: parses arguments, calls the library, nothing else.

Each subcommand lives in `instructkit.commands.<name>` with `register(subparsers)`
and a `run(args) -> int`; heavy imports (torch) happen inside `run` so `--help` is fast.
Exit codes: 0 success, 2 usage or input error (one line per problem), 1 internal failure,
130 interrupted (SIGINT), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from instructkit import __version__
from instructkit.commands import HelpFormatter
from instructkit.console import flush_output, quiet_broken_pipe, say
from instructkit.errors import Terminated, UserError

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


def raise_terminated(signum, frame) -> None:
    raise Terminated()


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Like `parse_args`, but an unknown flag is reported with the subcommand's usage,
    not the top-level one."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


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
        flush_output()  # what is buffered goes out now, or nowhere: never a failed exit
        say("terminated" if code == 143 else "interrupted", file=sys.stderr)
        return code
    except BrokenPipeError:
        quiet_broken_pipe()
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    raise SystemExit(main())
