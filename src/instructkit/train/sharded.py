"""Sharded checkpoints for `--strategy fsdp`, with `torch.distributed.checkpoint` (DCP).

Each rank writes its own shards of the model and optimizer state into `step-N/state/`
(DCP records which slice of which tensor each file holds), rank 0 adds the scheduler,
its RNG and the position as in a plain checkpoint (state.py). Everything goes into a
hidden temporary directory that rank 0 renames into place once every rank has written,
so a kill during a save leaves the previous checkpoint intact.

DCP reshards on load: a checkpoint written by 2 ranks loads into 1 process (no process
group: the model is plain) or into 4, as long as the model and optimizer are the same.
The state dicts are keyed by parameter name (`get_state_dict`), not by position in the
optimizer, which is what makes that possible.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from instructkit.errors import UserError
from instructkit.files import fsync_directory
from instructkit.train import distributed
from instructkit.train.state import (
    TMP_PREFIX,
    Position,
    _save,
    _write_json,
    checkpoint_dirs,
    rng_state,
)

STATE_DIR = "state"  # the DCP directory inside step-N


def is_sharded_checkpoint(path: Path) -> bool:
    return (path / STATE_DIR / ".metadata").is_file()


def save_sharded_checkpoint(
    out: Path,
    position: Position,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    keep: int,
    info: distributed.Dist,
) -> None:
    """Every rank calls this: write `out/checkpoints/step-N` atomically, keep the `keep` latest."""
    root = out / "checkpoints"
    final = root / f"step-{position.step}"
    tmp = root / f"{TMP_PREFIX}step-{position.step}"  # one name all ranks agree on
    if info.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    distributed.barrier(info)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save(
        {"model": model_state, "optimizer": optimizer_state},
        checkpoint_id=tmp / STATE_DIR,
        no_dist=not info.enabled,
    )
    if info.is_main:
        _save(tmp / "trainer.pt", {"scheduler": scheduler.state_dict(), "rng": rng_state()})
        _write_json(tmp / "position.json", asdict(position))
        fsync_directory(tmp / STATE_DIR)
        fsync_directory(tmp)
    distributed.barrier(info)  # every rank's shards are on disk
    if info.is_main:
        _publish(root, tmp, final, keep)
    distributed.barrier(info)


def _publish(root: Path, tmp: Path, final: Path, keep: int) -> None:
    if final.exists():  # re-saving a step (a resumed run that stops where it began)
        old = root / f"{TMP_PREFIX}old-{final.name}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
    fsync_directory(root)
    for stale in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(stale)
    for leftover in root.glob(f"{TMP_PREFIX}*"):  # from a run killed while saving
        shutil.rmtree(leftover, ignore_errors=True)


def load_sharded_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[Position, dict[str, Any]]:
    """Every rank calls this: restore this rank's shards (resharded to the current world
    size), the scheduler; return the position and rank 0's RNG states, as `load_checkpoint`."""
    try:
        position = Position(**json.loads((path / "position.json").read_text(encoding="utf-8")))
        trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise UserError(f"{path}: cannot read checkpoint ({error})") from None
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    try:
        dcp.load(state, checkpoint_id=path / STATE_DIR, no_dist=not dist.is_initialized())
    except (RuntimeError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise UserError(
            f"{path}: checkpoint does not match this run's model ({first_line}); "
            "was the config changed since it was written?"
        ) from None
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )
    scheduler.load_state_dict(trainer["scheduler"])
    return position, trainer["rng"]
