"""`instructkit dpo`: preference-tune a model (typically an SFT run) on chosen/rejected pairs.

Every `DPOConfig` field that applies is a flag, generated from the dataclass as
`finetune`'s are (prompt masking is implied and packing does not apply, so neither is
offered); settings resolve the same way: defaults, or the run's config.yaml with
`--resume`, then `--config FILE.yaml`, then the flags given.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from instructkit.commands import HelpFormatter
from instructkit.commands.finetune import CHOICES, METAVARS
from instructkit.commands.flags import add_config_flags
from instructkit.config import DPO_LOSSES, DPOConfig

DESCRIPTION = """\
Preference-tune a model with DPO on chosen/rejected pairs (the book's
instruction-data-with-preference.json, or prompt/chosen/rejected records).

The reference policy is the starting model: its log-probabilities of every pair are
computed once, before training, and kept in RUN/reference_logps.safetensors (a resumed
run reads them back). Writes what finetune writes (config.yaml, metrics.jsonl with
rewards/chosen, rewards/rejected, margin and accuracy, loss.png, checkpoints/, model/).

examples:
  instructkit dpo --data instruction-data-with-preference.json --model runs/sft --out runs/dpo
  instructkit dpo --data prefs.jsonl --model runs/sft --out runs/ipo --loss ipo --beta 0.5
  instructkit dpo --out runs/dpo --resume
"""

NOT_FLAGS = {"mask_prompt", "pack"}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "dpo",
        help="preference-tune a model with DPO on chosen/rejected pairs",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--config", metavar="FILE.yaml", help="read settings from YAML (flags override it)"
    )
    names = [f.name for f in dataclasses.fields(DPOConfig) if f.name not in NOT_FLAGS]
    add_config_flags(
        parser,
        DPOConfig,
        names,
        layered=True,
        choices={**CHOICES, "loss": DPO_LOSSES},
        metavars={**METAVARS, "data": "PREF"},
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the run artifacts already in --out"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from instructkit.commands.finetune import config_from_args
    from instructkit.train.dpo import dpo

    config = config_from_args(args, DPOConfig)
    result = dpo(config, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"DPO: {result.steps} steps ({result.epochs:.2f} epochs, {result.tokens_seen:,} "
            f"pairs) in {result.elapsed_s:.1f} s; final train loss {_fmt(result.train_loss)}, "
            f"val loss {_fmt(result.val_loss)}"
        )
        print(f"Run directory: {result.out_dir}")
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
