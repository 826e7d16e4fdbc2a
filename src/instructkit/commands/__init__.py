"""One module per `instructkit` subcommand.

Each module has `register(subparsers)`, which adds its parser with
`formatter_class=HelpFormatter` and `set_defaults(run=run)`, and `run(args) -> int`.
"""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default and keeps hand-written line breaks in descriptions."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # A required flag or one without a default has nothing to show: no "(default: None)".
        if action.required or action.default is None:
            return action.help
        return super()._get_help_string(action)


def add_model_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """--model, --style, --tokenizer and --device, as every command that loads a model reads them."""
    parser.add_argument(
        "--model",
        required=required,
        help="run dir, model dir, preset/hub id, random:PRESET or .pth",
    )
    parser.add_argument(
        "--style", help="prompt style; when not given, the one saved with the model, else alpaca"
    )
    parser.add_argument("--tokenizer", help="tokenizer spec when the model has none saved")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
