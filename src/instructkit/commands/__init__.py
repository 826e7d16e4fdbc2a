"""One module per `instructkit` subcommand.

Each module has `register(subparsers)`, which adds its parser with
`formatter_class=HelpFormatter` and `set_defaults(run=run)`, and `run(args) -> int`.
"""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default and keeps hand-written line breaks in descriptions."""
