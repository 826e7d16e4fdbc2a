"""`instructkit finetune`: fine-tune a GPT on an instruction file into a run directory.

Every `FinetuneConfig` field is a flag (`--batch-size` for `batch_size`), its help text
the field's docstring. Settings resolve as: the dataclass defaults, then `--config
FILE.yaml`, then the flags given; with `--resume` the run's own config.yaml takes the
place of the defaults, so `instructkit finetune --out runs/NAME --resume` is enough.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from instructkit.commands import HelpFormatter
from instructkit.commands.flags import add_config_flags
from instructkit.config import (
    LR_SCHEDULES,
    PRECISIONS,
    SPLIT_METHODS,
    STRATEGIES,
    TRAIN_ON,
    FinetuneConfig,
)

DESCRIPTION = """\
Fine-tune a GPT model on instruction/input/output records (the book's chapter 7).

Prints the initial training and validation loss, then a progress bar; writes
config.yaml, metrics.jsonl, loss.png, checkpoints/step-N/ and model/ (Hugging Face
GPT-2 layout, LoRA merged) into --out.

Under torchrun (torchrun --nproc_per_node N -m instructkit finetune ...): --batch-size is
per process (the global batch is batch_size x N), --strategy picks ddp or fsdp, and
--resume may change --batch-size when batch_size x N stays the same. Every other flag
means the same in one process or many.

examples:
  instructkit finetune --data instruction-data.json --model gpt2-medium --out runs/book
  instructkit finetune --data data.json --model gpt2 --out runs/lora --lora-rank 16 --lr 1e-4
  instructkit finetune --out runs/book --resume
  torchrun --nproc_per_node 2 -m instructkit finetune --data data.json --model gpt2-medium \\
      --out runs/fsdp --batch-size 4 --strategy fsdp
"""

METAVARS = {"data": "FILE", "out": "DIR", "model": "SPEC", "tokenizer": "SPEC"}
CHOICES = {
    "split": SPLIT_METHODS,
    "lr_schedule": LR_SCHEDULES,
    "precision": PRECISIONS,
    "train_on": TRAIN_ON,
    "strategy": STRATEGIES,
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a model on an instruction file",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--config", metavar="FILE.yaml", help="read settings from YAML (flags override it)"
    )
    add_finetune_flags(parser, layered=True)
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the run artifacts already in --out"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def add_finetune_flags(
    parser: argparse.ArgumentParser,
    names: tuple[str, ...] | None = None,
    *,
    layered: bool = False,
    defaults: dict | None = None,
) -> None:
    """`FinetuneConfig` fields as flags: all of them for finetune, the shared ones for others."""
    add_config_flags(
        parser,
        FinetuneConfig,
        names,
        layered=layered,
        defaults=defaults,
        choices=CHOICES,
        metavars=METAVARS,
    )


def run(args: argparse.Namespace) -> int:
    from instructkit.train import finetune

    config = config_from_args(args, FinetuneConfig)
    result = finetune(config, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"Fine-tuned {result.steps} steps ({result.epochs:.2f} epochs, "
            f"{result.tokens_seen:,} target tokens) in {result.elapsed_s:.1f} s; "
            f"final train loss {_fmt(result.train_loss)}, val loss {_fmt(result.val_loss)}"
        )
        print(f"Run directory: {result.out_dir}")
    return 0


def config_from_args(args: argparse.Namespace, cls: type):
    """The run's config (`cls`: FinetuneConfig, DPOConfig): defaults, or the run's own
    config.yaml with --resume, then --config FILE, then the flags given."""
    from instructkit.config import check_values, config_from_dict, load_config
    from instructkit.errors import UserError

    values: dict = {}
    if args.resume:
        if "out" not in args:
            raise UserError("--resume needs --out RUN_DIR, the run to continue")
        saved = Path(args.out) / "config.yaml"
        if not saved.is_file():
            raise UserError(f"{args.out}: nothing to resume (no config.yaml in the run directory)")
        values.update(load_config(saved))
    if args.config:
        from_file = load_config(args.config)
        check_values(from_file, source=args.config, cls=cls)
        values.update(from_file)
    names = [f.name for f in dataclasses.fields(cls)]
    values.update({name: getattr(args, name) for name in names if name in args})
    return config_from_dict(values, cls=cls)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
