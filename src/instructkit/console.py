"""What the commands print, made safe for a reader that goes away.

`instructkit finetune ... 2>&1 | tee log`, then Ctrl-C: the terminal sends SIGINT to
`tee` too, so the run's next write to the pipe fails with `BrokenPipeError`. That must
not cost the checkpoint the Ctrl-C asked for, so output on the way out goes through
`say` or a `PipeSafe` stream: the first broken pipe sends all further output of the
process to /dev/null and the work goes on. Also a progress bar for long work, and the
plural of a count ("1 record").
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO, TypeVar

T = TypeVar("T")


def quiet_broken_pipe() -> None:
    """The reader of our output is gone (`| head`, or `| tee` killed by the same Ctrl-C):
    send further output nowhere instead of failing at every print and at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError):
            pass
    os.close(devnull)


class PipeSafe:
    """A text stream whose writes never raise `BrokenPipeError` (e.g. for a progress bar)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            quiet_broken_pipe()
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            quiet_broken_pipe()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def say(*values: Any, file: TextIO | None = None, **kwargs: Any) -> None:
    """`print`, flushed at once, that survives a reader that went away."""
    print(*values, file=PipeSafe(file or sys.stdout), flush=True, **kwargs)


def flush_output() -> None:
    """Flush stdout and stderr now, so a broken pipe cannot fail the interpreter's exit."""
    for stream in (sys.stdout, sys.stderr):
        PipeSafe(stream).flush()


PROGRESS_DELAY = 1.0  # seconds of work before a bar appears: quick runs stay quiet


def progress(items: Iterable[T], desc: str, unit: str, *, enabled: bool = True) -> Iterable[T]:
    """`items`, with a progress bar on stderr once the work has taken `PROGRESS_DELAY`
    seconds (a 50 MB data file is not 15 s of silence); the bar survives a broken pipe."""
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(
        items, desc=desc, unit=unit, delay=PROGRESS_DELAY, leave=False, file=PipeSafe(sys.stderr)
    )


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """'1 record', '2 records', '1,100 records' ('1 process', '2 processes' with `nouns`)."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"
