"""What keeps a run directory whole: one process at a time, and the same data on resume.

Two `finetune` processes writing one run directory interleave metrics.jsonl and leave
config.yaml from one and checkpoints from the other; a resumed run whose data file
changed in place would silently train on something else. The lock is an advisory
`flock` on `RUN/.lock`: the kernel releases it when its process dies, so a killed run
never leaves it stuck. The fingerprint is a hash of the loaded records, saved with the run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Self

from instructkit.console import plural
from instructkit.errors import UserError
from instructkit.files import write_json

LOCK_FILE = ".lock"
FINGERPRINT_FILE = "data-fingerprint.json"


class RunLock:
    """Exclusive ownership of a run directory for as long as the process holds it."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory) / LOCK_FILE
        self.handle = None

    def acquire(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "another process"
                handle.close()
                raise UserError(
                    f"{self.path.parent}: in use by {owner}; wait for it to finish or stop it "
                    "(one process per run directory)"
                ) from None
            if _is_current(handle, self.path):
                break
            handle.close()  # its owner removed it while we opened it: take the new one
        handle.seek(0)
        handle.truncate()
        handle.write(f"instructkit process {os.getpid()}")
        handle.flush()
        self.handle = handle
        return self

    def release(self) -> None:
        """Unlock and remove the lock file (while still holding it, so nobody can take a
        file that is about to disappear: `acquire` checks it locked the current one)."""
        if self.handle is not None:
            self.path.unlink(missing_ok=True)
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _is_current(handle, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


@contextmanager
def owned_run_dir(directory: str | os.PathLike, *, hold: bool = True) -> Iterator[None]:
    """Hold `directory`'s lock for the block (`hold`: rank 0 of a run); a directory created
    for the lock that is still empty afterwards (a setup that failed) is removed again."""
    if not hold:
        yield
        return
    directory = Path(directory)
    created = not directory.exists()
    lock = RunLock(directory).acquire()
    try:
        yield
    finally:
        lock.release()
        if created:
            with suppress(OSError):  # not empty: the run wrote something to keep
                directory.rmdir()


def records_fingerprint(records: list[dict]) -> dict:
    """How many records and a hash of their content, in order."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return {"records": len(records), "sha256": digest.hexdigest()}


def save_fingerprint(out: Path, fingerprint: dict) -> None:
    write_json(out / FINGERPRINT_FILE, fingerprint)


def check_fingerprint(out: Path, fingerprint: dict, data: str) -> None:
    """Refuse to resume on data that differs from what the run started with."""
    path = out / FINGERPRINT_FILE
    if not path.exists():  # a run from before fingerprints: nothing to compare against
        return
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved == fingerprint:
        return
    counts = f"{plural(saved.get('records', 0), 'record')} then, {fingerprint['records']:,} now"
    if saved.get("records") == fingerprint["records"]:
        counts = f"{plural(fingerprint['records'], 'record')}, contents differ"
    raise UserError(
        f"{data}: the data changed since {out} started ({counts}); resuming would train on "
        "different records. Restore the file, or start a new run (--out elsewhere or --overwrite)"
    )
