"""Errors a user can cause, with messages written for that user.

The CLI prints each problem of a `UserError` on its own line (the first 20, then a
count) and exits 2; any other exception is an internal failure and exits 1.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or usage: one or more problems, each a complete sentence for the user."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class DataError(UserError):
    """A data file that cannot be read or has invalid records."""


class ModelError(UserError):
    """A model spec, checkpoint or tokenizer that cannot be loaded."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, `docker stop`, job schedulers), handled like Ctrl-C:
    a command saves what it can, then exits 143 instead of 130."""
