"""Where the book's shared data lies (`../shared/data` beside the checkout, never copied in).

$INSTRUCTKIT_SHARED_DATA wins; otherwise the nearest `shared/data` above the tests, so a
git worktree under the main checkout's parent finds it too. Tests that need a file skip,
naming it, only when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path


def shared_data_dir() -> Path:
    if os.environ.get("INSTRUCTKIT_SHARED_DATA"):
        return Path(os.environ["INSTRUCTKIT_SHARED_DATA"])
    here = Path(__file__).resolve().parent
    for parent in here.parents:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared" / "data"
    return here.parents[1] / "shared" / "data"  # the documented place, for the skip reason


SHARED_DATA = shared_data_dir()
