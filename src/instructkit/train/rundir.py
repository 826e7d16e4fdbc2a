"""The run directory's rules: a fresh run needs an empty one, `--resume` one this config
started, `--overwrite` replaces only the files instructkit writes there.

Checked on every rank before anything is written, and the run dir is claimed (config.yaml
written, old artifacts removed) only once setup has worked, so a failed setup leaves
nothing that a second try would refuse; a run that diverges before its first checkpoint
removes what it wrote for the same reason. `.lock` (train.guards) is not content.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import fields
from pathlib import Path

from instructkit.config import FinetuneConfig, load_config, save_config
from instructkit.errors import UserError
from instructkit.train.guards import FINGERPRINT_FILE, LOCK_FILE, save_fingerprint
from instructkit.train.state import latest_checkpoint

RUN_ARTIFACTS = (
    "config.yaml",
    "metrics.jsonl",
    "loss.png",
    "checkpoints",
    "model",
    "adapter.safetensors",
    "reference_logps.safetensors",
    "responses.json",
    "scores.json",
    "report.md",
    FINGERPRINT_FILE,
)
# Settings a resumed run may change without breaking the exact continuation of the data
# order, the model and the optimizer (epochs/max_steps extend or shorten the run; the run
# dir may have moved).
RESUME_MAY_CHANGE = {
    "out",
    "epochs",
    "max_steps",
    "eval_every",
    "eval_batches",
    "log_every",
    "save_every",
    "keep_checkpoints",
    "num_workers",
    "device",
    "compile",
}


def check_run_dir(
    config: FinetuneConfig, resume: bool, overwrite: bool, world_size: int = 1
) -> Path | None:
    """Check the run dir against resume/overwrite; return the checkpoint to resume from."""
    out = Path(config.out)
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one of them")
    if resume:
        saved = out / "config.yaml"
        if not saved.is_file():
            raise UserError(f"{out}: nothing to resume (no config.yaml in the run directory)")
        checkpoint = latest_checkpoint(out / "checkpoints")
        global_batch = checkpoint_global_batch(checkpoint) if checkpoint else None
        check_resume_config(config, saved, config.batch_size * world_size, global_batch)
        return checkpoint
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()) and not overwrite:
        raise UserError(
            f"{out}: run directory is not empty; pass --resume to continue that run "
            "or --overwrite to replace it"
        )
    return None


def check_resume_config(
    config: FinetuneConfig,
    saved_path: Path,
    global_batch: int | None = None,
    saved_global_batch: int | None = None,
) -> None:
    """Refuse changed settings; `batch_size` may change with the number of processes as long
    as the global batch (batch_size x processes) stays the same, which keeps the data order."""
    saved = load_config(saved_path)
    problems = []
    if saved_global_batch:  # the batch size is checked as part of the global batch
        saved["batch_size"] = config.batch_size
        if global_batch != saved_global_batch:
            problems.append(
                f"batch_size: the checkpoint's global batch (batch_size x processes) is "
                f"{saved_global_batch}, this run's {global_batch}"
            )
    problems += [
        f"{field.name}: this run was started with {saved.get(field.name)!r}, now {getattr(config, field.name)!r}"
        for field in fields(type(config))
        if field.name not in RESUME_MAY_CHANGE
        and field.name in saved
        and saved[field.name] != getattr(config, field.name)
    ]
    if problems:
        raise UserError(
            [f"{saved_path}: cannot resume with a different setting ({p})" for p in problems]
        )


def checkpoint_global_batch(checkpoint: Path) -> int | None:
    """The global batch of the run that wrote `checkpoint` (None if it predates the record)."""
    try:
        position = json.loads((checkpoint / "position.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"{checkpoint}: cannot read checkpoint ({error})") from None
    return position.get("global_batch") or None


def claim_run_dir(config: FinetuneConfig, overwrite: bool, fingerprint: dict | None = None) -> None:
    """Make the run dir this run's: remove the old artifacts (with `overwrite`), save the
    config and the data's fingerprint (which `--resume` compares against)."""
    out = Path(config.out)
    if overwrite:
        remove_run_artifacts(out)
    save_config(config, out / "config.yaml")
    if fingerprint is not None:
        save_fingerprint(out, fingerprint)


def remove_run_artifacts(out: Path) -> None:
    for name in RUN_ARTIFACTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
