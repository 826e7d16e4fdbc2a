"""The one way instructkit writes a file: atomically, durably, with ordinary permissions.

A reader (a colleague, a web server, a resumed run) sees either the old file or the whole
new one, never half of one: every write goes to a temp file in the same directory, is
fsynced and renamed over the target. The temp file is removed when writing fails. The
final file gets the permissions a plain `open()` would give it (0666 less the umask), not
mkstemp's private 0600, so a run directory is readable by whoever may read its parent.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from instructkit.errors import UserError


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (threads may be
    creating files meanwhile)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path` for a library that writes to a path itself
    (safetensors, matplotlib, torch.save); on success it replaces `path` durably."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temp = Path(name)
    try:
        yield temp
        os.chmod(temp, 0o666 & ~current_umask())  # after the write: some libraries recreate it
        _fsync_file(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Replace `path` with `data` (text is written as UTF-8)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as temp:
        temp.write_bytes(payload)
    return Path(path)


def write_json(
    path: str | os.PathLike,
    obj: Any,
    *,
    indent: int = 2,
    sort_keys: bool = False,
    ensure_ascii: bool = False,
) -> Path:
    """Replace `path` with `obj` as JSON and a final newline."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii)
    return write_atomic(path, text + "\n")


@contextmanager
def staging_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty directory beside `target` to fill; on success it becomes `target`
    (replacing an older one), on failure it is removed and `target` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it private
        yield staging
        for child in staging.iterdir():
            if child.is_file():
                _fsync_file(child)
        fsync_directory(staging)
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_directory(staging: Path, target: Path) -> None:
    """Move the complete `staging` directory to `target`, replacing an older `target`.

    A rename is atomic; replacing a non-empty directory takes two, so the old one is moved
    aside first and deleted only once the new one is in place.
    """
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target}: exists and is not a directory")
    if not target.exists():
        os.replace(staging, target)
    else:
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    fsync_directory(target.parent)


def check_writable(path: str | os.PathLike, what: str, *, directory: bool = False) -> Path:
    """Fail now, in one line, if `path` (a file, or a `directory`) cannot be written: before
    the hours of work whose result would go there, not after.

    Writing creates missing parents and replaces files by renaming a temp file beside them,
    so what must be writable is the nearest existing directory; it is probed by creating a
    file there, which also catches read-only mounts and root-owned places that permission
    bits alone do not show.
    """
    path = Path(path)
    if path.is_dir() != directory and path.exists():
        kind = (
            "is a directory; give a file name" if path.is_dir() else "exists and is not a directory"
        )
        raise UserError(f"{what} {path}: {kind}")
    existing = path if directory and path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {path}: {existing} is a file, not a directory")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".instructkit-probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise UserError(f"{what} {path}: cannot write in {existing} ({error.strerror})") from None
    return path


def fsync_directory(path: str | os.PathLike) -> None:
    """Make a rename inside `path` survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
