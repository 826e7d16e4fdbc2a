"""Resumable training checkpoints, written atomically.

A checkpoint is a directory `checkpoints/step-N/` holding everything needed to continue
a run as if it had never stopped: the model and optimizer state dicts, the scheduler,
the Python and torch RNG states, the data position (epoch, and how many micro-batches
of that epoch were consumed) and the loop's running counters. It is written into a
hidden temporary directory and renamed into place, so a kill during a save leaves the
previous checkpoint intact and never a half-written one under a `step-N` name.

`open_epoch` is the other half of an exact resume: it replays the data order up to the
checkpoint's position and restores the RNG where the interrupted run took it.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from instructkit.errors import UserError
from instructkit.files import fsync_directory
from instructkit.train import distributed

STEP_DIR = re.compile(r"^step-(\d+)$")
TMP_PREFIX = ".tmp-"
TEST_SAVE_DELAY = "INSTRUCTKIT_TEST_SAVE_DELAY"  # tests only: seconds a save pauses midway


@dataclass
class Position:
    """Where the loop stands: optimizer steps done, and the data consumed so far.

    `batch_index` counts micro-batches of `epoch` already trained on; the data order is a
    function of the seed and the epoch, so resuming skips exactly those batches.
    """

    step: int = 0
    epoch: int = 0
    batch_index: int = 0
    tokens_seen: int = 0
    records_seen: int = 0
    counters: dict[str, float] = field(default_factory=dict)
    global_batch: int = 0  # batch_size x processes that wrote it (0: not recorded)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dirs(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name))]
    return [path for _, path in sorted(found)]


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def save_checkpoint(
    root: str | os.PathLike,
    position: Position,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rng: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write `root/step-N` atomically, then delete all but the `keep` latest checkpoints."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{position.step}"
    tmp = root / f"{TMP_PREFIX}step-{position.step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        _save(tmp / "model.pt", model.state_dict())
        time.sleep(float(os.environ.get(TEST_SAVE_DELAY, "0")))  # tests: a save to interrupt
        _save(tmp / "optimizer.pt", optimizer.state_dict())
        _save(
            tmp / "trainer.pt",
            {"scheduler": scheduler.state_dict(), "rng": rng if rng is not None else rng_state()},
        )
        _write_json(tmp / "position.json", asdict(position))
        fsync_directory(tmp)
    except BaseException:  # a second Ctrl-C, a full disk: no half-written checkpoint stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # re-saving a step (e.g. a resumed run that stops where it began)
        old = root / f"{TMP_PREFIX}old-{final.name}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
    fsync_directory(root)
    for stale in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(stale)
    for leftover in root.glob(f"{TMP_PREFIX}*"):
        if not leftover.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(leftover, ignore_errors=True)
    return final


def save_run_checkpoint(
    out: Path,
    position: Position,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    keep: int,
    info: distributed.Dist,
) -> None:
    """Rank 0 writes `out/checkpoints/step-N`; every rank waits for it."""
    if info.is_main:
        save_checkpoint(
            out / "checkpoints", position, model, optimizer, scheduler, rng=rng_state(), keep=keep
        )
    distributed.barrier(info)


def load_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[Position, dict[str, Any]]:
    """Restore model, optimizer and scheduler in place; return the position and RNG states.

    The RNG states are returned rather than applied: the loop applies them at the point
    where the interrupted run took them.
    """
    path = Path(path)
    try:
        position = Position(**json.loads((path / "position.json").read_text(encoding="utf-8")))
        model_state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
        optimizer_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise UserError(f"{path}: cannot read checkpoint ({error})") from None
    try:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
    except (RuntimeError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise UserError(
            f"{path}: checkpoint does not match this run's model ({first_line}); "
            "was the config changed since it was written?"
        ) from None
    scheduler.load_state_dict(trainer["scheduler"])
    return position, trainer["rng"]


def open_epoch(loader, position: Position, rng: dict | None) -> Iterator:
    """An iterator over the rest of `position.epoch`'s batches, in the seeded order.

    Creating a DataLoader iterator draws from torch's global RNG, so a resumed run
    restores the checkpoint's RNG state where the interrupted run had taken it: before
    opening the epoch if the checkpoint fell on an epoch boundary, after it otherwise.
    """
    for owner in (loader.batch_sampler, loader.sampler):
        if hasattr(owner, "set_epoch"):
            owner.set_epoch(position.epoch)
    if rng is not None and position.batch_index == 0:
        set_rng_state(rng)
    batches = iter(loader)
    if rng is not None and position.batch_index > 0:
        set_rng_state(rng)
    for _ in range(position.batch_index):
        next(batches)
    return batches


def _save(path: Path, obj: Any) -> None:
    with open(path, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
